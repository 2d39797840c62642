import math

import orjson
import pytest

from stream.errors import InvalidEvent
from stream.events.schema import MAX_EVENT_BYTES, Event, dump_event, event_from_dict, parse_event, parse_events

GOOD = {
    "event_id": "e1", "ts": 1767571200000, "account_id": "acct-1", "type": "trade",
    "asset": "BTC", "amount": 0.25, "usd_value": 12_500.0, "side": "buy", "price": 50_000.0,
    "counterparty": "acct-2", "ip": "10.0.0.1", "device_id": "dev-1", "country": "DE",
    "label": 0, "scenario": "normal",
}


def reason(d) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        event_from_dict(d)
    return info.value


def test_valid_event_round_trips():
    ev = parse_event(orjson.dumps(GOOD))
    assert isinstance(ev, Event)
    assert ev.to_dict() == GOOD
    assert parse_event(dump_event(ev)) == ev


def test_iso_timestamp_equals_epoch_ms():
    iso = dict(GOOD, ts="2026-01-05T00:00:00Z")
    offset = dict(GOOD, ts="2026-01-05T01:00:00+01:00")
    assert event_from_dict(iso).ts == GOOD["ts"] == event_from_dict(offset).ts


def test_unknown_fields_are_ignored():
    assert event_from_dict(dict(GOOD, extra={"x": 1})).ts == GOOD["ts"]


@pytest.mark.parametrize("field", ["event_id", "ts", "account_id", "type", "asset", "amount", "usd_value"])
def test_missing_required_field_is_named(field):
    d = dict(GOOD)
    del d[field]
    err = reason(d)
    assert err.field == field and "missing" in err.reason


@pytest.mark.parametrize("field,value,words", [
    ("amount", -1.0, "negative"),
    ("usd_value", "12", "expected number"),
    ("amount", True, "expected number"),
    ("type", "airdrop", "unknown event type"),
    ("ts", "yesterday", "ISO-8601"),
    ("ts", 12, "outside years"),
    ("account_id", 7, "expected string"),
    ("account_id", "", "empty"),
    ("side", "hold", "buy"),
    ("label", 2, "0 or 1"),
    ("account_id", "x" * 300, "longer than"),
])
def test_bad_values_give_precise_reasons(field, value, words):
    err = reason(dict(GOOD, **{field: value}))
    assert err.field == field
    assert words in err.reason


def test_non_finite_numbers_are_rejected():
    # JSON has no NaN literal; a float NaN can still arrive through a decoded dict.
    err = reason(dict(GOOD, amount=math.nan))
    assert err.field == "amount" and "finite" in err.reason
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        parse_event(b'{"amount": NaN}')


def test_trade_needs_price_but_deposit_does_not():
    trade = dict(GOOD)
    del trade["price"]
    assert reason(trade).field == "price"
    deposit = {k: v for k, v in GOOD.items() if k not in ("side", "price")} | {"type": "deposit"}
    assert event_from_dict(deposit).price is None


@pytest.mark.parametrize("raw,words", [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"null", "JSON object"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bytes_that_are_not_an_event(raw, words):
    with pytest.raises(InvalidEvent, match=words):
        parse_event(raw)


def test_oversize_payload_is_rejected_before_decoding():
    big = orjson.dumps(dict(GOOD, note="x" * MAX_EVENT_BYTES))
    with pytest.raises(InvalidEvent, match="exceeds"):
        parse_event(big)


@pytest.mark.parametrize("odd", [
    # As many sides and prices as trades, and yet a trade lacks them and a deposit has them:
    [{"type": "trade", "side": None, "price": None}, {"type": "deposit"}],
    [{"type": "trade", "side": None}, {"type": "deposit", "price": None}],
    [{"type": "trade", "price": None}, {"type": "deposit", "side": None}],
    [{"type": "deposit"}],                                   # more sides than trades
])
def test_a_batch_parses_as_its_events_do_one_by_one(odd):
    """The batch reading checks trades' sides and prices by counting them: batches where the
    counts balance and yet some event is wrong must still give each event's own outcome."""
    dicts = [dict(GOOD, event_id=f"e{i}") for i in range(20)]
    for i, change in enumerate(odd):
        dicts[3 + 5 * i] = {k: v for k, v in {**dicts[3 + 5 * i], **change}.items() if v is not None}
    values = [orjson.dumps(d) for d in dicts]

    def outcome(value):
        try:
            return parse_event(value)
        except InvalidEvent as exc:
            return exc.reason, exc.field

    got = [e if isinstance(e, Event) else (e.reason, e.field) for e in parse_events(values)]
    assert got == [outcome(v) for v in values]
    assert sum(not isinstance(g, Event) for g in got) == len(odd) - 1  # the odd trade is refused
    assert [g.side for g in got if isinstance(g, Event) and g.type == "deposit"] == [None]
