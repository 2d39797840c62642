"""Hostile input (issue 4, parser part): property-based fuzzing of the parser and the pipeline.

Whatever arrives, ``parse_event`` returns an Event or raises InvalidEvent with a reason,
and the pipeline dead-letters it with that reason while the valid events around it are
still scored. No other exception may escape.
"""

from __future__ import annotations

import json
import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.core.pipeline import Pipeline
from stream.core.ports import Record
from stream.errors import InvalidEvent
from stream.events.schema import (
    EVENT_TYPES, Event, _parse_checked, event_from_dict, parse_event, parse_events,
)
from tests.doubles import MemoryStore

GOOD = {"event_id": "e1", "ts": 1767571200000, "account_id": "a1", "type": "deposit",
        "asset": "BTC", "amount": 1.0, "usd_value": 100.0}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
field_values = st.one_of(json_values, st.sampled_from(list(EVENT_TYPES) + ["buy", "sell", "", "\x00", "é" * 300]),
                         st.integers(min_value=0, max_value=2**63), st.just(1e308), st.just(-0.0))
event_like = st.fixed_dictionaries({}, optional={k: field_values for k in list(GOOD) + ["side", "price", "label"]})


def check(raw: bytes) -> Event | None:
    try:
        return parse_event(raw)
    except InvalidEvent as exc:
        assert str(exc)  # a reason, always
        return None


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    check(raw)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_random_json_documents(value):
    try:
        raw = json.dumps(value, allow_nan=True).encode()
    except (ValueError, OverflowError):
        return
    check(raw)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_like)
def test_event_shaped_dicts(d):
    # Straight to the validator: NaN, infinities and huge numbers arrive as Python values.
    try:
        ev = event_from_dict(d)
    except InvalidEvent as exc:
        assert str(exc)
        return
    assert ev.type in EVENT_TYPES
    assert math.isfinite(ev.amount) and ev.amount >= 0 and math.isfinite(ev.usd_value)


def test_deep_nesting_huge_values_and_odd_unicode():
    cases = [b"[" * 5000 + b"]" * 5000, orjson.dumps({**GOOD, "asset": "x" * 1_000_000}),
             orjson.dumps({**GOOD, "account_id": "\ud7ff\U0010ffff"}), b'{"ts": 1e999}',
             b'{"amount": 123456789012345678901234567890}', orjson.dumps({**GOOD, "type": ["deposit"]}),
             orjson.dumps({**GOOD, "type": {"a": 1}}), orjson.dumps({**GOOD, "label": [1]})]
    for raw in cases:
        check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=60), event_like.map(lambda d: json.dumps(d, default=str).encode())),
                min_size=1, max_size=20))
def test_pipeline_dead_letters_garbage_and_scores_the_rest(models_student, garbage):
    store = MemoryStore()
    pipe = Pipeline(models_student, store)
    good = [orjson.dumps({**GOOD, "event_id": f"ok-{i}", "ts": GOOD["ts"] + i}) for i in range(3)]
    values = [good[0], *garbage, good[1], good[2]]
    records = [Record("t", 0, i, v, b"k") for i, v in enumerate(values)]
    result = pipe.process(records)
    assert set(result.event_ids) >= {"ok-0", "ok-1", "ok-2"}
    assert result.scored + len(result.dead) + result.duplicates == len(values)
    assert all(d.reason for d in result.dead)


GOOD_TRADE = {**GOOD, "event_id": "t1", "type": "trade", "side": "sell", "price": 50_000.0, "counterparty": "acct-9",
              "ip": "10.0.0.1", "device_id": "d1", "country": "DE", "label": 0, "scenario": "normal"}
near_valid = st.builds(lambda base, change: {**base, **change}, st.sampled_from([GOOD, GOOD_TRADE]),
                       st.dictionaries(st.sampled_from(list(GOOD_TRADE) + ["extra"]), field_values, max_size=3))


def _outcome(parse, raw):
    try:
        return parse(raw).to_dict()
    except InvalidEvent as exc:
        return ("invalid", exc.reason, exc.field)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(near_valid.map(lambda d: json.dumps(d, allow_nan=True, default=str).encode()),
                 event_like.map(lambda d: json.dumps(d, allow_nan=True, default=str).encode()),
                 st.binary(max_size=200)))
def test_fast_path_agrees_with_the_checked_parser(raw):
    """msgspec's fast path accepts only what the field-by-field validator accepts, identically."""
    assert _outcome(parse_event, raw) == _outcome(_parse_checked, raw)


def _batch_outcomes(values):
    return [e.to_dict() if isinstance(e, Event) else ("invalid", e.reason, e.field)
            for e in parse_events(values)]


one_value = st.one_of(near_valid.map(lambda d: json.dumps(d, allow_nan=True, default=str).encode()),
                      st.binary(max_size=80),
                      st.sampled_from([b"", b" ", b"\n", b"{}", b"null", orjson.dumps(GOOD) + b"\n" + orjson.dumps(GOOD)]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(one_value, min_size=0, max_size=40), st.lists(st.integers(0, 39), max_size=5))
def test_batch_parse_agrees_with_value_by_value(values, good_slots):
    """A batch parsed in one msgspec call gives, value by value, what parse_event gives."""
    values = list(values)
    for i in good_slots:  # enough valid values that the joined fast path is taken
        values.insert(min(i, len(values)), orjson.dumps({**GOOD, "event_id": f"g{i}"}))
    assert _batch_outcomes(values) == [_outcome(parse_event, v) for v in values]


def test_values_cannot_straddle_into_each_other():
    """Newline-joined decoding must not read one value's bytes as part of another's event."""
    good = [orjson.dumps({**GOOD, "event_id": f"g{i}"}) for i in range(12)]
    a, b = orjson.dumps({**GOOD, "event_id": "A"}), orjson.dumps({**GOOD, "event_id": "B"})
    cases = [
        [*good, a + b"\n" + b, b""],                  # two events in one value, an empty one after it
        [*good, a + b"\n" + b[:40], b[40:]],          # one event split over two values
        [*good, a[:-1] + b",\n" + b[:-1], b"}"],      # a value that only closes the one before
        [*good, b"\n".join([a, b]), b" "],
    ]
    for values in cases:
        outcome = _batch_outcomes(values)
        assert outcome == [_outcome(parse_event, v) for v in values]
        assert outcome[:12] == [orjson.loads(g) for g in good]
        assert all(o[0] == "invalid" for o in outcome[12:])
