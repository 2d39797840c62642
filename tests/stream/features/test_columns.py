"""The compiled scan of event payloads (stream.features.columns): what it takes, it reads
exactly as parse_event and EventColumns.of do; what it does not take, it gives up on."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.errors import InvalidEvent
from stream.events.schema import EVENT_TYPES, MAX_EVENT_BYTES, parse_event
from stream.features.columns import EventColumns, read_values, scan_values

GOOD = {"event_id": "e1", "ts": 1767571200000, "account_id": "a1", "type": "deposit",
        "asset": "BTC", "amount": 1.0, "usd_value": 100.0}
TRADE = {**GOOD, "type": "trade", "side": "sell", "price": 42.5, "ip": "10.0.0.1", "device_id": "d",
         "country": "FR", "counterparty": "c", "label": 1, "scenario": "normal"}


def same(a: EventColumns, b: EventColumns) -> None:
    """Equal to the bit: floats compared as their int64 bits."""
    for x, y in zip(a.arrays, b.arrays, strict=True):
        assert x.dtype == y.dtype
        assert np.array_equal(x.view(np.int64), y.view(np.int64)), (x, y)
    assert a.event_ids == b.event_ids and a.account_ids == b.account_ids


def agrees(raw: bytes) -> bool:
    """The scan gives up on ``raw``, or reads what parse_event reads; True if it took it."""
    cols = scan_values([raw], MAX_EVENT_BYTES)
    if cols is None:
        return False
    event = parse_event(raw)  # must not raise: the scan took only valid events
    same(cols, EventColumns.of([event]))
    assert cols.event(0) == event
    return True


@pytest.mark.parametrize("raw", [
    orjson.dumps(GOOD), orjson.dumps(TRADE), json.dumps(TRADE).encode(),  # ", " and ": " separators
    json.dumps(TRADE, indent=1).encode(),  # newlines between the fields
    b' { "ts" : 1767571200000 , "event_id":"e","account_id":"a","type":"login","asset":"X",'
    b'"amount":0,"usd_value":1e3 ,"ip":null,"side":null,"price":null,"label":null}\r\t',
    orjson.dumps({**GOOD, "amount": 0.000012, "usd_value": 1.5e-7}),
    orjson.dumps({**GOOD, "amount": 9007199254740992.0, "usd_value": 123456.789e-3}),
    orjson.dumps({**GOOD, "event_id": "x" * 256}),
])
def test_takes_plain_events_and_reads_them_exactly(raw):
    assert agrees(raw)


@pytest.mark.parametrize("raw", [
    orjson.dumps({**GOOD, "asset": "é"}), orjson.dumps({**GOOD, "asset": "a\\b"}),  # non-ASCII, an escape
    orjson.dumps({**GOOD, "note": 1}), b'{"event_id":"e1",' + orjson.dumps(GOOD)[1:],  # unknown key, a repeat
    orjson.dumps({**GOOD, "ts": "2026-01-05T00:00:00Z"}), orjson.dumps({**GOOD, "ts": 1767571200000.0}),
    orjson.dumps({**GOOD, "ts": 5}), orjson.dumps({**GOOD, "amount": -1.0}), orjson.dumps({**GOOD, "amount": 1e300}),
    orjson.dumps({**GOOD, "amount": 0.1234567890123456789}), orjson.dumps({**GOOD, "label": True}),
    orjson.dumps({**GOOD, "label": 2}), orjson.dumps({**GOOD, "side": "buy", "price": 1.0}),  # not a trade
    orjson.dumps({**TRADE, "price": None}), orjson.dumps({**GOOD, "ip": ""}), orjson.dumps({**GOOD, "type": "refund"}),
    orjson.dumps({**GOOD, "event_id": "x" * 257}), orjson.dumps({**GOOD, "account_id": None}),
    orjson.dumps({k: v for k, v in GOOD.items() if k != "asset"}), b"[]", b"", b"{}", orjson.dumps(GOOD) + b"x",
    b'{"event_id":"e1","ts":01767571200000}', orjson.dumps(GOOD)[:-1],
])
def test_gives_up_on_anything_else(raw):
    assert scan_values([raw], MAX_EVENT_BYTES) is None


def test_one_payload_it_does_not_take_gives_up_the_batch_and_size_counts():
    raws = [orjson.dumps({**GOOD, "event_id": f"e{i}"}) for i in range(5)]
    assert scan_values(raws, MAX_EVENT_BYTES) is not None
    assert scan_values(raws[:2] + [b"not json"] + raws[2:], MAX_EVENT_BYTES) is None
    assert scan_values(raws, len(raws[0]) - 1) is None


def test_read_values_scans_plain_batches_and_parses_the_rest_with_reasons():
    raws = [orjson.dumps({**GOOD, "event_id": f"e{i}"}) for i in range(4)]
    batch, refused = read_values(raws, MAX_EVENT_BYTES)
    assert refused == [] and batch.event_ids == [f"e{i}" for i in range(4)]
    # A refused value and a valid one the scan does not take: the batch is parsed, the
    # refusal keeps its index and reason, the valid events (both shapes) keep their order.
    mixed = raws[:1] + [orjson.dumps({**GOOD, "amount": -5.0})] + [json.dumps({**GOOD, "event_id": "p"}, indent=1).encode()]
    batch, refused = read_values(mixed, MAX_EVENT_BYTES)
    assert [i for i, _ in refused] == [1] and refused[0][1].field == "amount", refused
    assert batch.event_ids == ["e0", "p"]
    assert read_values([b"nope"], MAX_EVENT_BYTES)[0] is None


def test_select_keeps_rows_and_their_events():
    raws = [orjson.dumps({**TRADE, "event_id": f"e{i}", "account_id": f"a{i % 2}", "price": i + 0.5})
            for i in range(6)]
    cols = scan_values(raws, MAX_EVENT_BYTES).select([1, 4, 5])
    same(cols, EventColumns.of([parse_event(raws[i]) for i in (1, 4, 5)]))
    assert [cols.event(i).price for i in range(3)] == [1.5, 4.5, 5.5]


numbers = st.one_of(
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=2**64),
    st.decimals(min_value=0, max_value=10**30, allow_nan=False, allow_infinity=False, places=8).map(str),
    st.from_regex(r"\A(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?\Z"),
)
plain = st.text(alphabet="abcXYZ09-_.:/ ", min_size=1, max_size=40)
texts = st.one_of(plain, plain, plain, st.text(max_size=20), st.text(alphabet="ab", min_size=250, max_size=260))
few = st.one_of(st.just(frozenset()), st.just(frozenset()), st.sets(st.sampled_from(list(TRADE)), max_size=2))


def _event_json(d: dict, drop, spaced: bool) -> bytes:
    """``d`` as JSON, numbers given as strings written as they are (other literals)."""
    body = ", ".join(f'"{k}": {v if isinstance(v, str) and k in ("amount", "usd_value", "price") else json.dumps(v)}'
                     for k, v in d.items() if k not in drop)
    return ("{ " + body + " }" if spaced else "{" + body.replace(", ", ",").replace('": ', '":') + "}").encode()


taken = []


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(amount=numbers, usd=numbers, price=st.one_of(st.none(), numbers), ts=st.integers(0, 5 * 10**12),
       etype=st.sampled_from(EVENT_TYPES + ("trade", "refund")), side=st.sampled_from([None, "buy", "sell", "hold"]),
       strings=st.lists(texts, min_size=8, max_size=8), label=st.sampled_from([None, 0, 1, 0, 1, 2, True]),
       drop=few, spaced=st.booleans())
def test_agrees_with_parse_event(amount, usd, price, ts, etype, side, strings, label, drop, spaced):
    if etype == "trade" and side is None:
        side = "buy"
    d = {"event_id": strings[0], "ts": ts if ts > 10**12 else ts + 1767571200000, "account_id": strings[1],
         "type": etype, "asset": strings[2], "amount": amount, "usd_value": usd, "side": side,
         "price": price if etype == "trade" else None, "counterparty": strings[3], "ip": strings[4],
         "device_id": strings[5], "country": strings[6], "label": label, "scenario": strings[7]}
    raw = _event_json(d, drop, spaced)
    try:
        parse_event(raw)
    except InvalidEvent:
        assert scan_values([raw], MAX_EVENT_BYTES) is None
        return
    taken.append(agrees(raw))


def test_the_property_above_exercised_the_scan():
    # Run after it (file order): a property that never reached the scan's reading would pass
    # whatever the scan computes.
    assert sum(taken) >= 100, (sum(taken), len(taken))


def test_the_simulator_s_events_are_all_taken():
    from training.simulate import simulate
    raws = [orjson.dumps(d) for d in simulate(3000, 30, 2, seed=3)]
    cols = scan_values(raws, MAX_EVENT_BYTES)
    assert cols is not None
    same(cols, EventColumns.of([parse_event(r) for r in raws]))
