"""Reliability: 10k+ hostile payloads through a running faust worker.

Hypothesis generates the payloads (random bytes, random JSON documents, deeply nested
JSON, huge numbers, NaN/Infinity tokens, wrong types, missing fields, odd unicode, values
of 1 MB); they are produced between real events. The worker must not crash; every payload
the parser refuses must land in the dead-letter topic with the parser's reason and its
original bytes; the valid events around them must be scored exactly as offline.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from stream.errors import InvalidEvent
from stream.events.schema import parse_event
from tests.integration.conftest import (
    alert_ids, consume_all, offline, produce, start_worker, stored_states, wait_processed,
)
from tests.stream.events.test_fuzz import GOOD, event_like, json_values

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

N_HOSTILE = 10_000
MB = 1024 * 1024


def _json(value) -> bytes:
    try:
        return json.dumps(value, allow_nan=True, default=str).encode()  # NaN/Infinity tokens included
    except (ValueError, OverflowError):
        return b"[" * 3000 + b"]" * 3000


payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(_json),
    event_like.map(_json),
    st.integers(min_value=1, max_value=20_000).map(lambda d: b"[" * d + b"]" * d),
    st.sampled_from([b'{"ts": 1e999}', b'{"amount": 123456789012345678901234567890}', b"NaN", b"",
                     orjson.dumps({**GOOD, "account_id": "\ud7ff\U0010ffff"}), b"\xff\xfe\x00",
                     orjson.dumps({**GOOD, "usd_value": "NaN"}), b'{"event_id": "\\ud800"}']),
)


def hostile_payloads(n: int) -> list[bytes]:
    """``n`` payloads from hypothesis (deterministic), plus a few 1 MB values."""
    out: list[bytes] = []

    @hsettings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck))
    @given(payloads)
    def collect(p):
        out.append(p)

    collect()
    big = orjson.dumps({**GOOD, "asset": "x" * MB})
    out += [big, b"7" * MB, big.replace(b'"deposit"', b'"withdrawal"')]
    return out


def refusal(raw: bytes) -> str | None:
    try:
        parse_event(raw)
    except InvalidEvent as exc:
        return exc.reason
    return None


def test_hostile_payloads_are_dead_lettered_and_valid_events_scored(settings, models, small_history, tmp_path):
    hostile = hostile_payloads(N_HOSTILE)
    assert len(hostile) >= N_HOSTILE
    refused = [p for p in hostile if refusal(p) is not None]
    accepted = [p for p in hostile if refusal(p) is None]  # (hypothesis may build a valid event)
    valid = small_history[:6_000]
    rng = random.Random(4)
    values, keys = [], []
    for e in valid:  # real events keyed by account, hostile ones spread between them
        values.append(orjson.dumps(e))
        keys.append(e["account_id"].encode())
    for p in hostile:
        i = rng.randrange(len(values) + 1)
        values.insert(i, p)
        keys.insert(i, rng.choice([None, b"", b"\xff", rng.randbytes(8)]))
    produce(settings, values, keys)
    worker = start_worker(settings, "faust", tmp_path / "worker.log")
    try:
        wait_processed(settings, len(values), timeout=300, proc=worker)
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
    dead = consume_all(settings, settings.dead_letter_topic, len(refused), timeout=60)
    cap = settings.dead_letter_max_bytes
    by_digest = {hashlib.sha256(p).hexdigest(): p for p in refused}
    originals = []
    for d in dead:
        headers = dict(d.headers)
        if "txwatch-truncated" in headers:  # cut to the cap; the digest names the original
            original = by_digest[headers["txwatch-sha256"].decode()]
            assert d.value == original[:cap] and int(headers["txwatch-truncated"]) == len(original)
        else:
            original = d.value
        originals.append(original)
        assert headers["txwatch-reason"].decode() == refusal(original)
        assert headers["txwatch-source"].startswith(settings.topics[0].encode())
    assert Counter(originals) == Counter(refused)  # each one, once, with its bytes
    assert sum("txwatch-truncated" in dict(d.headers) for d in dead) == 3  # the three 1 MB values
    expected, states = offline(models, valid)
    got = alert_ids(settings)
    assert len(got) == len(set(got))
    real_ids = {e["event_id"] for e in valid}
    assert {a for a in got if a in real_ids} == expected and expected
    mine = stored_states(settings)
    assert {k: v for k, v in mine.items() if k in states} == states
    assert len(accepted) < len(hostile) // 10  # the fuzz really is hostile
