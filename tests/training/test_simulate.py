"""Tests of the labelled exchange history simulator (training/simulate.py)."""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

from stream.errors import ConfigError, DataError
from stream.events.files import read_event_dicts, write_events
from stream.events.schema import EVENT_TYPES, event_from_dict
from stream.features.layout import REPORTING_THRESHOLD_USD
from training.simulate import (
    ASSETS, ATO_HIJACK, ATO_WITHDRAWALS, DORMANT_DELAY_S, DEFAULT_DUPLICATE_FRACTION, DEFAULT_LATE_FRACTION, SCENARIOS,
    VELOCITY_LOGIN_S, deliver, simulate,
)

START = 1767571200000
DAY = 86_400_000
DAYS = 30
N_EVENTS = 50_000


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return simulate(N_EVENTS, 500, DAYS, 11)


@pytest.fixture(scope="module")
def by_account(events) -> dict[str, list[dict]]:
    accounts = defaultdict(list)
    for e in events:
        accounts[e["account_id"]].append(e)
    return accounts


def _scenario(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["scenario"] == name]


def _write_bytes(path, events) -> bytes:
    write_events(path, events)
    return path.read_bytes()


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path):
    a = _write_bytes(tmp_path / "a.jsonl", simulate(20_000, 200, 10, 3))
    b = _write_bytes(tmp_path / "b.jsonl", simulate(20_000, 200, 10, 3))
    c = _write_bytes(tmp_path / "c.jsonl", simulate(20_000, 200, 10, 4))
    assert a == b
    assert a != c
    pa = _write_bytes(tmp_path / "a.parquet", simulate(20_000, 200, 10, 3))
    pb = _write_bytes(tmp_path / "b.parquet", simulate(20_000, 200, 10, 3))
    assert pa == pb


def test_event_count_is_close_to_requested(events):
    assert abs(len(events) - N_EVENTS) <= 0.03 * N_EVENTS


def test_every_event_satisfies_the_schema(events):
    for e in events:
        event_from_dict(e)
        assert e["type"] in EVENT_TYPES and e["asset"] in ASSETS
        assert e["ip"] and e["device_id"] and e["country"]
        assert ("side" in e) == ("price" in e) == (e["type"] == "trade")
        if e["type"] == "login":
            assert (e["asset"], e["amount"], e["usd_value"]) == ("USDT", 0.0, 0.0)
        if e["type"] in ("trade", "withdrawal", "transfer"):
            assert e["counterparty"]
        if e["asset"] == "USDT":
            assert e["usd_value"] == pytest.approx(e["amount"], abs=1e-3)


def test_sorted_by_time_inside_the_period_with_unique_ids(events):
    ts = [e["ts"] for e in events]
    assert ts == sorted(ts)
    assert START <= ts[0] and ts[-1] < START + DAYS * DAY
    assert len({e["event_id"] for e in events}) == len(events)


def test_activity_spreads_over_every_day_and_weekends_are_quieter(events):
    per_day = [0] * DAYS
    for e in events:
        per_day[(e["ts"] - START) // DAY] += 1
    assert min(per_day) > 0.01 * len(events)
    weekend = [c for d, c in enumerate(per_day) if d % 7 >= 5]  # START is a Monday
    weekday = [c for d, c in enumerate(per_day) if d % 7 < 5]
    assert sum(weekend) / len(weekend) < 0.95 * sum(weekday) / len(weekday)


@pytest.mark.parametrize("n_events,n_accounts,seed", [(20_000, 200, 1), (N_EVENTS, 500, 11)])
def test_positive_rate_is_in_range(n_events, n_accounts, seed, events):
    sample = events if n_events == N_EVENTS else simulate(n_events, n_accounts, DAYS, seed)
    rate = sum(e["label"] for e in sample) / len(sample)
    assert 0.003 <= rate <= 0.02


def test_label_and_scenario_agree(events):
    for e in events:
        assert e["label"] in (0, 1)
        assert e["scenario"] in SCENARIOS or e["scenario"] == "normal"
        assert (e["label"] == 1) == (e["scenario"] != "normal")


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_appears_early_and_late(events, name):
    ts = [e["ts"] for e in _scenario(events, name)]
    assert ts, f"no {name} events"
    third = DAYS * DAY / 3
    assert min(ts) < START + third
    assert max(ts) >= START + 2 * third


def test_wash_trades_are_ring_trades_at_a_flat_off_market_price(events, by_account):
    wash = _scenario(events, "wash_trading")
    assert all(e["type"] == "trade" for e in wash)
    ring_accounts = {e["account_id"] for e in wash}
    for e in wash:
        assert e["counterparty"] in ring_accounts and e["counterparty"] != e["account_id"]
    deviation = [abs(e["price"] * e["amount"] / e["usd_value"] - 1) for e in wash]
    assert sum(d > 0.002 for d in deviation) >= 0.75 * len(wash)
    trades_per_price = defaultdict(int)
    for e in wash:
        trades_per_price[e["price"]] += 1
    assert min(trades_per_price.values()) >= 20  # one fixed price per ring
    normal = [e for e in events if e["type"] == "trade" and e["label"] == 0]
    assert max(abs(e["price"] * e["amount"] / e["usd_value"] - 1) for e in normal) < 0.0021


def test_structuring_withdrawals_sit_just_under_the_threshold(events):
    structuring = _scenario(events, "structuring")
    assert all(e["type"] == "withdrawal" for e in structuring)
    for e in structuring:
        assert 0.85 * REPORTING_THRESHOLD_USD <= e["usd_value"] < REPORTING_THRESHOLD_USD
    per_account = defaultdict(int)
    for e in structuring:
        per_account[e["account_id"]] += 1
    assert min(per_account.values()) >= 4


def test_account_takeover_is_a_new_device_login_then_withdrawals_to_new_addresses(
        events, by_account):
    victims = {e["account_id"] for e in _scenario(events, "account_takeover")}
    assert victims
    hijacked = 0
    for account in victims:
        history = by_account[account]
        logins = [i for i, e in enumerate(history)
                  if e["scenario"] == "account_takeover" and e["type"] == "login"]
        assert logins
        for i in logins:
            login, before = history[i], history[:i]
            # A new IP always; a new device too, except in a hijacked session (usual device).
            assert login["ip"] not in {e["ip"] for e in before}
            if login["device_id"] in {e["device_id"] for e in before}:
                hijacked += 1
            seen = {e.get("counterparty") for e in before}
            drained = [e for e in history[i + 1:] if e["scenario"] == "account_takeover"
                       and e["ts"] - login["ts"] < 8 * 3_600_000]
            assert ATO_WITHDRAWALS[0] <= len(drained) <= ATO_WITHDRAWALS[1]
            assert all(e["type"] == "withdrawal" and e["counterparty"] not in seen
                       and e["device_id"] == login["device_id"] for e in drained)
    assert hijacked <= ATO_HIJACK * len(victims) + 3


def test_velocity_bursts_are_fast_and_regular(events, by_account):
    accounts = {e["account_id"] for e in _scenario(events, "velocity_burst")}
    assert accounts
    for account in accounts:
        ts = [e["ts"] for e in by_account[account] if e["scenario"] == "velocity_burst"]
        gaps = sorted(b - a for a, b in zip(ts, ts[1:]))
        assert len(ts) >= 20
        assert ts[-1] - ts[0] <= 10 * 60_000
        assert gaps[len(gaps) // 2] <= 3_500
        assert gaps[-1] <= 3 * gaps[len(gaps) // 2]  # nearly constant inter-arrival


def test_some_velocity_bursts_start_inside_a_login_session_and_some_do_not():
    # A script that signs in and fires, and one on an API key (no login): both are in the
    # training data, so "soon after a login" does not read as "normal" to the models.
    lo, hi = VELOCITY_LOGIN_S[0] * 1000, VELOCITY_LOGIN_S[1] * 1000
    in_session = without = 0
    for seed in range(4):
        history = simulate(20_000, 200, 10, seed)
        bursts = defaultdict(list)
        for e in history:
            if e["scenario"] == "velocity_burst":
                bursts[e["account_id"]].append(e)
        for account, burst in bursts.items():
            first = min(burst, key=lambda e: e["ts"])
            logins = [e for e in history if e["account_id"] == account and e["type"] == "login"
                      and e["device_id"] == first["device_id"] and e["ip"] == first["ip"]
                      and 0 < first["ts"] - e["ts"] <= hi]
            if logins:
                in_session += 1
                assert max(first["ts"] - e["ts"] for e in logins) >= lo
                assert all(e["label"] == 0 for e in logins)
            else:
                without += 1
    assert in_session and without, (in_session, without)


def test_mule_withdrawals_follow_a_deposit_of_about_the_same_value(events, by_account):
    mule = _scenario(events, "mule_turnaround")
    assert all(e["type"] == "withdrawal" for e in mule)
    for e in mule:
        history = by_account[e["account_id"]]
        funding = [d for d in history if d["type"] == "deposit" and d["asset"] == e["asset"]
                   and 0 < e["ts"] - d["ts"] <= 8 * 3_600_000
                   and 0.8 <= e["usd_value"] / d["usd_value"] <= 1.05]
        assert funding
        earlier = {d.get("counterparty") for d in history if d["ts"] < e["ts"]}
        assert e["counterparty"] not in earlier


def test_dormant_reactivation_follows_a_silence(events, by_account):
    withdrawals = _scenario(events, "dormant_reactivation")
    assert withdrawals
    for e in withdrawals:
        assert e["type"] == "withdrawal"
        history = by_account[e["account_id"]]
        first = min(w["ts"] for w in history if w["scenario"] == "dormant_reactivation")
        before = [h for h in history if h["ts"] < first]
        # the period is 30 days: silent since the start apart from the reactivating login
        assert [h["type"] for h in before] == ["login"]
        assert first - before[0]["ts"] <= DORMANT_DELAY_S[1] * 1000 + 1


def test_normal_behaviour_overlaps_with_the_scenarios(events, by_account):
    low, high = 0.85 * REPORTING_THRESHOLD_USD, REPORTING_THRESHOLD_USD
    near_threshold = [e for e in events if e["label"] == 0 and e["type"] == "withdrawal"
                      and low <= e["usd_value"] < high]
    assert near_threshold
    travel_logins = 0
    for history in by_account.values():
        countries = {history[0]["country"]}
        for e in history[1:]:
            if e["country"] not in countries and e["label"] == 0 and e["type"] == "login":
                travel_logins += 1
            countries.add(e["country"])
    assert travel_logins >= 5


def test_outflows_rarely_exceed_deposits(by_account):
    overdrawn = 0
    for history in by_account.values():
        deposits = sum(e["usd_value"] for e in history if e["type"] == "deposit")
        outflows = sum(e["usd_value"] for e in history if e["type"] in ("withdrawal", "transfer"))
        overdrawn += outflows > 1.01 * deposits
    assert overdrawn <= 0.05 * len(by_account)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_write_and_read_round_trip(tmp_path, events, suffix):
    path = tmp_path / f"events{suffix}"
    assert write_events(path, iter(events)) == len(events)
    assert list(read_event_dicts(path)) == events


def test_write_is_atomic(tmp_path, events):
    bad = events[:10] + [{"event_id": "x", "ts": START, "oops": {1, 2}}]
    new = tmp_path / "new.jsonl"
    with pytest.raises(TypeError):
        write_events(new, bad)
    assert not new.exists()
    old = tmp_path / "old.parquet"
    write_events(old, events[:5])
    before = old.read_bytes()
    with pytest.raises(Exception):
        write_events(old, events[:5] + [dict(events[0], ts="not a number")])
    assert old.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["old.parquet"]


def test_read_events_reports_bad_files(tmp_path):
    with pytest.raises(DataError):
        list(read_event_dicts(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"event_id": "e1"}\n\n{not json\n')
    reader = read_event_dicts(broken)
    assert next(reader) == {"event_id": "e1"}
    with pytest.raises(DataError, match=":3:"):
        next(reader)


@pytest.mark.parametrize("args", [
    (1_000, 500, 30, 1),  # too few events for the accounts
    (20_000, 10, 30, 1),  # too few accounts
    (20_000, 200, 0.5, 1),  # too short
    (20_000, 200, 30, -1),  # negative seed
])
def test_bad_arguments_are_config_errors(args):
    with pytest.raises(ConfigError):
        simulate(*args)


def test_progress_bar_goes_to_stderr_on_a_terminal(capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    simulate(5_000, 50, 2, 1, progress=True)
    captured = capsys.readouterr()
    assert "simulate" in captured.err and not captured.out


def test_no_progress_bar_in_logs(capsys):
    simulate(5_000, 50, 2, 1, progress=True)  # stderr is not a terminal under pytest
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_delivery_is_late_and_duplicated_by_the_stated_fractions(events):
    out = deliver(events, 3)
    assert out == deliver(events, 3) and out != deliver(events, 4)  # deterministic per seed
    ids = [e["event_id"] for e in out]
    assert sorted(set(ids)) == sorted(e["event_id"] for e in events)  # nothing lost or invented
    duplicates = len(ids) - len(set(ids))
    assert 0.5 * DEFAULT_DUPLICATE_FRACTION < duplicates / len(events) < 1.5 * DEFAULT_DUPLICATE_FRACTION
    newest, behind = 0, 0
    for e in out:
        behind += e["ts"] < newest
        newest = max(newest, e["ts"])
    # Late events (and the duplicate copies) arrive behind newer ones.
    assert 0.5 * DEFAULT_LATE_FRACTION < (behind - duplicates) / len(events) < 1.5 * DEFAULT_LATE_FRACTION
    assert deliver(events, 3, late_fraction=0.0, duplicate_fraction=0.0) == events


@pytest.mark.parametrize("kwargs", [{"late_fraction": -0.1}, {"duplicate_fraction": 1.0}, {"late_fraction": "x"}])
def test_bad_delivery_fractions_are_config_errors(events, kwargs):
    with pytest.raises(ConfigError):
        deliver(events[:10], 1, **kwargs)
