import math

import orjson
import pytest

from stream.errors import InvalidEvent
from stream.events.schema import MAX_EVENT_BYTES, Event, dump_event, event_from_dict, parse_event

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
