import math
import random

import numpy as np
import pytest

from stream.events.schema import Event
from stream.features.layout import (
    FEATURE_INDEX, FEATURE_NAMES, GAP_NONE, MAX_ADDRESSES, MAX_DEVICES, MAX_STATE_BYTES, N_FEATURES,
    REPORTING_THRESHOLD_USD, StateFormatError,
)
from stream.features.reference import AccountState, FeatureEngine, update

T0 = 1767571200000  # 2026-01-05 00:00 UTC, a Monday
F = FEATURE_INDEX


def ev(i, ts, type="deposit", usd=100.0, acct="a", **kw):
    defaults = {"asset": "BTC", "amount": usd / 50_000.0}
    if type == "trade":
        defaults.update(side="buy", price=50_000.0)
    defaults.update(kw)
    asset, amount = defaults.pop("asset"), defaults.pop("amount")
    return Event(f"e{i}", ts, acct, type, asset, amount, usd, **defaults)


def random_events(n, accounts=5, seed=0):
    rng = random.Random(seed)
    t = T0
    out = []
    for i in range(n):
        t += rng.randint(0, 600_000)
        kind = rng.choice(["deposit", "withdrawal", "trade", "transfer", "login"])
        kw = {"device_id": f"d{rng.randint(0, 12)}", "ip": f"ip{rng.randint(0, 12)}",
              "country": rng.choice(["DE", "FR", "US", "BR", "JP", "NG"]),
              "counterparty": f"cp{rng.randint(0, 40)}"}
        if kind == "trade":
            kw.update(side=rng.choice(["buy", "sell"]), price=50_000.0 * rng.uniform(0.9, 1.1))
        out.append(ev(i, t - rng.randint(0, 120_000), kind, rng.lognormvariate(5, 2),
                      acct=f"a{rng.randint(0, accounts - 1)}", **kw))
    return out


def test_feature_names_are_unique_and_sized():
    assert len(set(FEATURE_NAMES)) == N_FEATURES
    _, row = update(None, ev(0, T0))
    assert len(row) == N_FEATURES
    assert all(isinstance(v, float) and math.isfinite(v) for v in row)


def test_first_event_has_no_history():
    _, row = update(None, ev(0, T0, "withdrawal", counterparty="addr"))
    assert row[F["log_gap_prev"]] == GAP_NONE
    assert row[F["new_device"]] == 0.0  # nothing is "new" without history
    assert row[F["cnt_5m"]] == 1.0
    assert row[F["is_withdrawal"]] == 1.0


def test_decayed_counts_follow_time_constants():
    s, _ = update(None, ev(0, T0))
    s, row = update(s, ev(1, T0 + 300_000))  # 5 minutes later
    assert row[F["cnt_5m"]] == pytest.approx(1 + math.exp(-1))
    assert row[F["cnt_1h"]] == pytest.approx(1 + math.exp(-300 / 3600))
    assert row[F["log_gap_prev"]] == pytest.approx(math.log1p(300))


def test_takeover_pattern_lights_novelty_and_balance_features():
    s, _ = update(None, ev(0, T0, "deposit", 20_000.0, device_id="home", ip="1.1.1.1", country="DE"))
    s, _ = update(s, ev(1, T0 + 60_000, "login", 0.0, device_id="home", ip="1.1.1.1", country="DE"))
    s, login = update(s, ev(2, T0 + 86_400_000, "login", 0.0, device_id="evil", ip="6.6.6.6", country="XX"))
    assert (login[F["new_device"]], login[F["new_ip"]], login[F["new_country"]]) == (1.0, 1.0, 1.0)
    s, wd = update(s, ev(3, T0 + 86_460_000, "withdrawal", 19_000.0, device_id="evil",
                        ip="6.6.6.6", country="XX", counterparty="addr-new"))
    assert wd[F["new_counterparty"]] == 1.0
    assert wd[F["out_balance_ratio"]] == pytest.approx(19_000 / 20_000)
    assert wd[F["log_gap_novelty"]] == pytest.approx(math.log1p(60))
    assert wd[F["novelty_1h"]] > 0.9


def test_structuring_counts_near_threshold_withdrawals():
    s = None
    for i in range(5):
        s, row = update(s, ev(i, T0 + i * 600_000, "withdrawal", 0.95 * REPORTING_THRESHOLD_USD,
                              counterparty="addr"))
    assert row[F["near_threshold"]] == 1.0
    assert row[F["near_threshold_24h"]] > 4.5
    s, row = update(s, ev(9, T0 + 4_000_000, "withdrawal", REPORTING_THRESHOLD_USD, counterparty="addr"))
    assert row[F["near_threshold"]] == 0.0


def test_round_trip_and_off_market_price():
    s, _ = update(None, ev(0, T0, "trade", 5_000.0, amount=0.1, side="buy", price=50_000.0))
    s, row = update(s, ev(1, T0 + 60_000, "trade", 5_000.0, amount=0.1, side="sell", price=50_000.0))
    assert row[F["round_trip"]] == 1.0
    assert row[F["price_vs_mark"]] == pytest.approx(0.0)
    s, row = update(s, ev(2, T0 + 120_000, "trade", 5_000.0, amount=0.1, side="buy", price=40_000.0))
    assert row[F["price_vs_mark"]] == pytest.approx(abs(math.log(0.8)))


def test_late_event_is_clamped_and_flagged_deterministically():
    s, _ = update(None, ev(0, T0 + 600_000))
    before = s.to_bytes()
    s, row = update(s, ev(1, T0))  # 10 minutes late
    assert row[F["late"]] == 1.0
    assert row[F["log_gap_prev"]] == 0.0
    assert s.last_ts == T0 + 600_000
    # Same sequence, same result.
    s2, row2 = update(AccountState.from_bytes(before), ev(1, T0))
    assert row2 == row and s2 == s


def test_state_round_trips_exactly_and_continues_identically():
    events = random_events(3000, accounts=3)
    engine = FeatureEngine()
    engine.replay(events[:2000])
    restored = FeatureEngine()
    restored.states = {k: AccountState.from_bytes(v.to_bytes()) for k, v in engine.states.items()}
    for k in engine.states:
        assert restored.states[k] == engine.states[k]
    a, b = engine.replay(events[2000:]), restored.replay(events[2000:])
    assert np.array_equal(a, b)


def test_state_size_is_bounded_regardless_of_history():
    s = None
    sizes = []
    for i, e in enumerate(random_events(20_000, accounts=1)):
        s, _ = update(s, e)
        if i in (1_000, 19_999):
            sizes.append(len(s.to_bytes()))
    assert len(s.devices) <= MAX_DEVICES and len(s.addresses) <= MAX_ADDRESSES
    assert sizes[1] <= sizes[0] + 16  # only the bounded lists may still be filling up
    assert sizes[1] <= MAX_STATE_BYTES < 800


def test_foreign_state_bytes_are_refused():
    with pytest.raises(StateFormatError):
        AccountState.from_bytes(b"\x00" * 10)
    good = update(None, ev(0, T0))[0].to_bytes()
    with pytest.raises(StateFormatError):
        AccountState.from_bytes(b"\x00\x00\x00\x00" + good[4:])
    with pytest.raises(StateFormatError):
        AccountState.from_bytes(good + b"\x00")


def test_replay_matches_per_event_updates():
    events = random_events(2000, accounts=4)
    engine = FeatureEngine()
    rows = np.array([engine.process(e) for e in events])
    assert np.array_equal(rows, FeatureEngine().replay(events))
    assert np.all(np.isfinite(rows))


def test_duplicates_and_very_late_events_are_not_admitted():
    from stream.features.layout import LATE_TOLERANCE_MS
    from stream.features.reference import admit
    e1 = ev(1, T0 + 10 * LATE_TOLERANCE_MS)
    s, _ = update(None, e1)
    assert admit(s, e1) == "duplicate"
    assert admit(s, ev(2, T0 + 10 * LATE_TOLERANCE_MS - LATE_TOLERANCE_MS)) is None  # at the tolerance
    assert admit(s, ev(3, T0)).startswith("late by")
    # The id window is bounded: after MAX_RECENT_IDS newer events, e1 is no longer recognised.
    from stream.features.layout import MAX_RECENT_IDS
    for i in range(MAX_RECENT_IDS):
        s, _ = update(s, ev(10 + i, T0 + 10 * LATE_TOLERANCE_MS + i))
    assert admit(s, e1) is None
