"""Reasons in words: every feature gets a sentence in human units, checked against real rows."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

import workbench.explain as explain_module
from stream.events.schema import Event
from stream.features.layout import (
    EWMA_ALPHA, FEATURE_NAMES, GAP_NONE, NEAR_THRESHOLD_FRACTION, REPORTING_THRESHOLD_USD,
)
from stream.features.reference import update
from workbench.explain import explain, sentence

T = 1767571200000  # 2026-01-05 00:00 UTC, a Monday
DAY, HOUR = 86_400_000, 3_600_000
HOME = {"ip": "1.1.1.1", "device_id": "dev-1", "country": "DE"}


def _history() -> list[Event]:
    """A login, three deposits, a buy, then a login and a withdrawal from a new device."""
    away = {"ip": "9.9.9.9", "device_id": "dev-999", "country": "RU"}
    t_wd = T + 2 * DAY + 3 * HOUR
    return [
        Event("e1", T, "a", "login", "USD", 0.0, 0.0, **HOME),
        Event("e2", T + 60_000, "a", "deposit", "BTC", 0.01, 1000.0, **HOME),
        Event("e3", T + DAY, "a", "deposit", "BTC", 0.015, 1500.0, **HOME),
        Event("e4", T + 2 * DAY, "a", "deposit", "BTC", 0.5, 50000.0, **HOME),
        Event("e5", t_wd - 600_000, "a", "trade", "BTC", 0.1, 9000.0, side="buy", price=91000.0,
              counterparty="mm-1", **HOME),
        Event("e6", t_wd - 40_000, "a", "login", "USD", 0.0, 0.0, **away),
        Event("e7", t_wd, "a", "withdrawal", "BTC", 0.1, 9500.0, counterparty="addr-x", **away),
    ]


def _rows(events: list[Event]) -> list[tuple[dict, dict]]:
    """(feature row as a name -> value dict, event dict) for each event, via the reference engine."""
    state, out = None, []
    for ev in events:
        state, row = update(state, ev)
        out.append((dict(zip(FEATURE_NAMES, row)), ev.to_dict()))
    return out


@pytest.fixture(scope="module")
def withdrawal() -> tuple[dict, dict]:
    return _rows(_history())[-1]


def _more_rows() -> list[tuple[dict, dict]]:
    """Rows of other shapes: first event, deposits, trades (one a round trip), a transfer, a late event."""
    evs = _history()[:5] + [
        Event("e8", T + 2 * DAY + 3 * HOUR, "a", "trade", "BTC", 0.1, 9050.0, side="sell", price=90000.0,
              counterparty="mm-1", **HOME),
        Event("e9", T + 2 * DAY + 4 * HOUR, "a", "transfer", "USDT", 500.0, 500.0, counterparty="acct-b", **HOME),
        Event("e10", T + 2 * DAY + 4 * HOUR - 60_000, "a", "deposit", "BTC", 0.01, 900.0, **HOME),
    ]
    return _rows(evs)


def _generic(name: str, text: str) -> bool:
    return text.startswith(f"{name} =")


def test_every_feature_gets_a_specific_sentence_for_real_rows(withdrawal):
    for row, ev in [withdrawal, *_more_rows()]:
        assert set(row) == set(FEATURE_NAMES)
        for name in FEATURE_NAMES:
            text, value, usual = sentence(name, row, ev)
            assert text and not _generic(name, text), (name, ev["event_id"], text)
            assert "<" not in text and "nan" not in text.lower() and "inf" not in text.lower(), text
            assert value is None or math.isfinite(value)
            assert usual is None or (isinstance(usual, str) and usual in text)


def test_sentences_state_the_event_in_human_units(withdrawal):
    row, ev = withdrawal
    said = {name: sentence(name, row, ev)[0] for name in FEATURE_NAMES}
    assert said["is_withdrawal"] == "the event is a withdrawal of $9,500"
    assert said["log_usd"].startswith("withdrew $9,500; usually about $")
    # Balance before: the three deposits (the trade does not move it).
    assert said["out_balance_ratio"] == "withdrew 18 % of the estimated balance (about $52,500 before it)"
    assert said["wd_vs_last_deposit"] == "withdrew 19 % of the last deposit (last deposit about $50,000)"
    assert said["log_gap_login"] == "withdrawal 40 seconds after the last login"
    assert said["log_gap_deposit"] == "withdrawal 3 hours after the last deposit"
    assert said["log_gap_same_type"] == "withdrawal; never a withdrawal before on this account"
    assert said["log_account_age"] == "the account is 2 days old (since its first event)"
    assert said["log_n_events"].startswith("event number 7 on this account")
    assert said["new_counterparty"] == "first payout to this address (addr-x)"
    assert said["new_device"].startswith("device dev-999 already seen on the account")  # the login was new
    assert said["log_gap_novelty"] == "withdrawal 40 seconds after the last event from a new device, IP or country"
    assert said["hour_sin"] == said["hour_cos"] == "at 03:00 UTC (night)"
    assert said["is_weekend"] == "on a weekday (Wednesday, UTC)"
    assert said["near_threshold"].startswith("withdrawal of $9,500 just under the $10,000 reporting threshold")
    assert said["late"] == "arrived in event-time order"
    # The account's average spacing: 51 hours over 6 gaps, 8.5 rounded half up.
    assert said["log_gap_prev"].endswith("usually about 9 hours between events")


def test_typical_amount_is_the_reference_ewma_computed_by_hand(withdrawal):
    row, ev = withdrawal
    # reference.update: mu starts at log1p(usd) of the first non-login event, then
    # mu += EWMA_ALPHA * diff and var = (1 - a) * (var + a * diff^2); logins are skipped.
    mu, var = math.log1p(1000.0), 1.0
    for usd in (1500.0, 50000.0, 9000.0):
        diff = math.log1p(usd) - mu
        mu += EWMA_ALPHA * diff
        var = (1 - EWMA_ALPHA) * (var + EWMA_ALPHA * diff * diff)
    assert row["log_usd_vs_typical"] == pytest.approx(math.log1p(9500.0) - mu)
    typical = math.expm1(mu)
    text, value, usual = sentence("log_usd_vs_typical", row, ev)
    assert value == 9500.0 and usual == f"about ${typical:,.0f}"
    assert text == f"withdrew $9,500; usually about ${typical:,.0f}, {9500 / typical:.1f} times that"
    sd = math.sqrt(var + 0.01)
    text, _, usual = sentence("usd_z", row, ev)
    assert f"{row['usd_z']:.1f} standard deviations above" in text
    assert usual == f"about ${typical:,.0f} (mostly ${math.expm1(mu - sd):,.0f} to ${math.expm1(mu + sd):,.0f})"


def test_balance_share_percent():
    text, value, usual = sentence("out_balance_ratio", {"out_balance_ratio": 0.97},
                                  {"type": "withdrawal", "usd_value": 9700.0})
    assert text.startswith("withdrew 97 % of the estimated balance") and value == 97.0 and usual is None
    assert "97 %" in sentence("out_balance_ratio", {"out_balance_ratio": 0.97}, {})[0]
    assert "at least 100 times" in sentence("out_balance_ratio", {"out_balance_ratio": 100.0},
                                            {"type": "transfer", "usd_value": 5e5})[0]


@pytest.mark.parametrize("seconds, words", [(40, "40 seconds"), (45, "45 seconds"), (1, "1 second"),
                                             (12 * 60, "12 minutes"), (3 * 3600, "3 hours"), (2 * 86400, "2 days")])
def test_gaps_undo_log1p_of_seconds(seconds, words):
    text, value, _ = sentence("log_gap_deposit", {"log_gap_deposit": math.log1p(seconds)}, {"type": "withdrawal"})
    assert text == f"withdrawal {words} after the last deposit"
    assert value == pytest.approx(seconds)


def test_gap_none_means_never():
    for name in FEATURE_NAMES:
        if name.startswith("log_gap_"):
            text, value, _ = sentence(name, {name: GAP_NONE, "is_trade": 1.0}, {})
            assert "never" in text and value is None, text
    first_row, first_ev = _rows(_history()[:1])[0]
    assert sentence("log_gap_prev", first_row, first_ev)[0] == "login; never any event before on this account"


def test_counts_with_the_account_average():
    row = {"wd_cnt_1h": 9.0, "log_n_events": math.log1p(96), "log_account_age": math.log1p(10 * 86400)}
    text, value, usual = sentence("wd_cnt_1h", row, {"type": "withdrawal"})
    # 96 events over 240 hours.
    assert text == "9 withdrawals in the last hour; the account averages 0.4 events of any type an hour"
    assert value == 9.0
    young = {"cnt_24h": 5.2, "log_n_events": math.log1p(6), "log_account_age": math.log1p(600)}
    assert sentence("cnt_24h", young, {})[0] == (
        "about 5.2 events in the last 24 hours; the account is only 10 minutes old, with 6 events")


def test_novelty_names_the_device_ip_country():
    row = {"new_device": 1.0, "new_ip": 1.0, "new_country": 1.0, "n_devices": 3.0, "log_n_events": math.log1p(9)}
    ev = {"type": "login", "device_id": "dev-123", "ip": "10.0.0.7", "country": "BR"}
    assert sentence("new_device", row, ev)[0] == (
        "first time from this device (dev-123); 3 devices seen on the account recently")
    assert sentence("new_ip", row, ev)[0] == "first time from this IP address (10.0.0.7)"
    assert sentence("new_country", row, ev)[0] == "first time from this country (BR)"
    assert sentence("log_gap_novelty", {**row, "log_gap_novelty": 0.0}, ev)[0] == (
        "login itself from a new device, IP or country")


def test_late_threshold_trade_and_time_sentences():
    rows = _more_rows()
    late_row, late_ev = rows[-1]
    assert late_row["late"] == 1.0
    assert sentence("late", late_row, late_ev)[0].startswith("arrived late, out of event-time order")
    sell_row, sell_ev = rows[5]
    assert sentence("round_trip", sell_row, sell_ev)[0].startswith("sell BTC reverses the previous trade")
    assert sentence("price_vs_mark", sell_row, sell_ev)[0] == "executed 0.6 % below the mark price"
    assert sentence("cp_is_top", sell_row, sell_ev)[0] == (
        "counterparty mm-1 is the account's most frequent recent counterparty")
    text = sentence("near_threshold_24h", {"near_threshold_24h": 3.0}, {})[0]
    assert f"${REPORTING_THRESHOLD_USD:,.0f}" in text and f"{NEAR_THRESHOLD_FRACTION * 100:.0f} %" in text
    assert f"${NEAR_THRESHOLD_FRACTION * REPORTING_THRESHOLD_USD:,.0f}" in text and text.startswith("3 withdrawals")
    saturday = T + 5 * DAY + 14 * HOUR + 30 * 60_000
    assert sentence("is_weekend", {}, {"ts": saturday})[0] == "on a weekend (Saturday, UTC)"
    assert sentence("hour_cos", {}, {"ts": saturday})[0] == "at 14:30 UTC (afternoon)"


def test_alerts_without_features_speak_from_the_event():
    ev = {"type": "withdrawal", "usd_value": 48000, "ts": T, "device_id": "dev-9"}
    out = explain([{"feature": "log_usd", "contribution": 1.5}, {"feature": "new_device", "contribution": 0.7},
                   {"feature": "is_withdrawal", "contribution": 0.2}], {}, ev)
    assert [o["feature"] for o in out] == ["log_usd", "new_device", "is_withdrawal"]
    assert out[0] == {"feature": "log_usd", "contribution": 1.5, "value": 48000.0, "usual": None,
                      "sentence": "withdrew $48,000"}
    assert out[1]["sentence"] == "new_device = missing" and out[1]["value"] is None
    assert out[2]["sentence"] == "the event is a withdrawal of $48,000"


GARBAGE = [None, float("nan"), float("inf"), -float("inf"), "x", "", [], {}, -1.0, 1e308, -1e308, True, 0.0, 7.5]
EVENTS = [{}, None, {"type": "bogus", "usd_value": "lots", "ts": "yesterday", "device_id": 5},
          {"type": "trade", "usd_value": -3.0, "ts": 1e30, "price": 0, "amount": None},
          {"type": "withdrawal", "usd_value": float("nan"), "ts": -5, "counterparty": ""},
          {"type": ["withdrawal"], "usd_value": [1], "ts": {}, "ip": None, "country": "\x00\n"}]


def test_garbage_never_raises():
    for name in (*FEATURE_NAMES, "no_such_feature", "", None, 3):
        for bad in GARBAGE:
            for ev in EVENTS:
                rows = ({name: bad} if isinstance(name, str) else {}, {n: bad for n in FEATURE_NAMES}, None, [])
                for row in rows:
                    text, value, usual = sentence(name, row, ev)
                    assert isinstance(text, str) and text
                    assert value is None or math.isfinite(value)
    assert sentence("cnt_1h", {"cnt_1h": float("nan")}, {}) == ("cnt_1h = missing", None, None)
    assert sentence("no_such_feature", {"no_such_feature": 2.0}, {}) == ("no_such_feature = 2", 2.0, None)
    out = explain([{"feature": "usd_z"}, {}, "cnt_1h", ("late", 0.5), None, {"contribution": float("nan")}],
                  None, None)
    assert len(out) == 6 and all(o["sentence"] for o in out)
    assert out[3]["feature"] == "late" and out[3]["contribution"] == 0.5 and out[5]["contribution"] is None
    assert explain(None, {}, {}) == [] and explain("junk", {}, {}) == []


def test_imports_only_the_standard_library_and_the_layout():
    tree = ast.parse(Path(explain_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "datetime", "stream.features.layout"}, imported
