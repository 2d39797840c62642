"""The per-account risk rating: the pure rules of workbench.risk, and their stored form
(workbench.ratings, reviewers' overrides through workbench.cases)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from workbench import risk
from workbench.risk import COOLDOWN_MS, HALF_LIFE_MS, LEVEL_ORDER, Rating, decayed, level_of, update

probabilities = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
times = st.integers(min_value=0, max_value=60 * risk.DAY_MS)


@st.composite
def ratings_states(draw) -> Rating:
    score = draw(scores)
    updated = draw(times)
    return Rating(score=score, level=draw(st.sampled_from(list(LEVEL_ORDER))),
                  level_since_ms=draw(st.integers(min_value=0, max_value=updated)), updated_ms=updated,
                  confirmed=draw(st.integers(min_value=0, max_value=5)))


# -- monotone in p ------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(r=ratings_states(), p1=probabilities, p2=probabilities, dt=st.integers(min_value=0, max_value=30 * risk.DAY_MS))
def test_a_higher_probability_never_lowers_the_score_or_the_level(r, p1, p2, dt):
    lo, hi = sorted((p1, p2))
    at = r.updated_ms + dt
    a, b = update(r, "alert", at, lo), update(r, "alert", at, hi)
    assert a.score <= b.score
    assert LEVEL_ORDER[a.level] <= LEVEL_ORDER[b.level]


def test_an_alert_raises_the_score_by_its_evidence():
    r = update(Rating(), "alert", 0, 0.5)
    assert r.score == pytest.approx(risk.ALERT_WEIGHT * 0.5)
    r2 = update(r, "alert", 0, 0.5)
    assert r2.score == pytest.approx(1 - (1 - r.score) * (1 - risk.ALERT_WEIGHT * 0.5))
    assert r2.score > r.score


# -- decay ------------------------------------------------------------------------------------

def test_the_score_halves_after_one_half_life():
    r = Rating(score=0.8, level="high", level_since_ms=0, updated_ms=1_000)
    assert decayed(r, 1_000 + HALF_LIFE_MS) == pytest.approx(0.4)
    assert decayed(r, 1_000 + 2 * HALF_LIFE_MS) == pytest.approx(0.2)
    # an alert with no evidence only decays it
    assert update(r, "alert", 1_000 + HALF_LIFE_MS, 0.0).score == pytest.approx(0.4)


def test_decay_never_runs_forward_from_an_earlier_time():
    r = Rating(score=0.8, level="high", level_since_ms=0, updated_ms=10 * risk.DAY_MS)
    assert decayed(r, 0) == pytest.approx(0.8)
    late = update(r, "alert", 0, 0.0)          # an alert older than the rating: applied at the rating's time
    assert late.updated_ms == r.updated_ms and late.score == pytest.approx(0.8)


# -- levels and cooldown --------------------------------------------------------------------

def test_a_level_rises_at_once():
    r = Rating(score=0.0, level="low", level_since_ms=0, updated_ms=0)
    r = update(r, "alert", 1, 1.0)              # 0.6: high, within any cooldown
    assert r.level == "high" and r.level_since_ms == 1


def test_a_level_does_not_fall_within_the_cooldown_but_does_after_it():
    r = Rating(score=0.7, level="high", level_since_ms=0, updated_ms=0)
    r = update(r, "false_positive", 0)          # 0.35: medium by score, but high was set just now
    assert r.score == pytest.approx(0.35)
    assert level_of(r.score) == "medium" and r.level == "high"
    r = update(r, "alert", COOLDOWN_MS - 1, 0.0)
    assert level_of(r.score) == "medium" and r.level == "high", "fell inside the cooldown"
    r = update(r, "alert", COOLDOWN_MS, 0.0)
    assert r.level == "medium" and r.level_since_ms == COOLDOWN_MS
    # and the new level has its own cooldown
    r = update(r, "false_positive", COOLDOWN_MS)
    assert level_of(r.score) == "low" and r.level == "medium"


def test_level_cuts():
    assert [level_of(s) for s in (0.0, 0.2999, 0.3, 0.5999, 0.6, 0.8499, 0.85, 1.0)] == [
        "low", "low", "medium", "medium", "high", "high", "critical", "critical"]


# -- reviewers' signals ---------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(r=ratings_states())
def test_confirmed_raises_and_counts(r):
    after = update(r, "confirmed", r.updated_ms)
    assert after.score >= r.score
    if r.score < 1.0:
        assert after.score > r.score
    assert after.score == pytest.approx(1 - (1 - r.score) * (1 - risk.CONFIRMED_WEIGHT))
    assert after.confirmed == r.confirmed + 1
    assert LEVEL_ORDER[after.level] >= LEVEL_ORDER[r.level]


@settings(max_examples=200, deadline=None)
@given(r=ratings_states(), at=times)
def test_false_positive_halves(r, at):
    after = update(r, "false_positive", at)     # a decision carries no time: it applies at the rating's
    assert after.updated_ms == r.updated_ms
    assert after.score == pytest.approx(r.score / 2)
    assert after.confirmed == r.confirmed


def test_an_unknown_signal_is_refused():
    with pytest.raises(ValueError, match="unknown rating signal 'escalated'"):
        update(Rating(), "escalated", 0)
    with pytest.raises(ValueError):
        update(Rating(score=0.5), "", 0, 0.9)


def test_nan_probability_counts_as_zero():
    r = Rating(score=0.4, level="medium", level_since_ms=0, updated_ms=0)
    nan = update(r, "alert", HALF_LIFE_MS, float("nan"))
    zero = update(r, "alert", HALF_LIFE_MS, 0.0)
    assert not math.isnan(nan.score)
    assert nan == zero


def test_out_of_range_probabilities_are_clamped():
    r = Rating(score=0.2)
    assert update(r, "alert", 0, 7.0) == update(r, "alert", 0, 1.0)
    assert update(r, "alert", 0, -3.0) == update(r, "alert", 0, 0.0)
    assert update(r, "alert", 0, float("inf")) == update(r, "alert", 0, 1.0)


# -- the score stays a probability ------------------------------------------------------------

signal_steps = st.lists(st.tuples(
    st.sampled_from(["alert", "confirmed", "false_positive"]),
    st.integers(min_value=-2 * risk.DAY_MS, max_value=10 * risk.DAY_MS),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5).map(float))),
    max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps=signal_steps)
def test_score_always_in_unit_interval(steps):
    r = Rating()
    t = 0
    for signal, dt, p in steps:
        t = max(0, t + dt)
        before = r
        r = update(r, signal, t, p)
        assert 0.0 <= r.score <= 1.0
        assert r.level in LEVEL_ORDER
        assert r.updated_ms >= before.updated_ms           # event time never runs backwards
        assert LEVEL_ORDER[r.level] >= LEVEL_ORDER[level_of(r.score)]  # never shown below its score


# -- stored ratings and overrides (both databases) -----------------------------------------------


@pytest.fixture
def fast_passwords(monkeypatch):
    from argon2 import PasswordHasher

    from workbench import auth

    monkeypatch.setattr(auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


def test_stored_rating_override_and_history(db, fast_passwords, monkeypatch):
    from workbench import auth, cases, ratings
    from workbench.models import Case, Rating as RatingRow, RatingChange, utcnow

    with db.transaction() as s:
        user = auth.create_user(s, "rita", "a-long-password", "reviewer")
        s.add(Case(account_id="acc-1", status="open"))
    actor = cases.Actor(user)

    with db.transaction() as s:
        row = ratings.apply_signal(s, "acc-1", "alert", 0.9, at_ms=1_000, why="alert e1 scored 0.900")
        assert (row.level, round(row.score, 2)) == ("medium", 0.54)
    with db.transaction() as s:
        ratings.apply_signal(s, "acc-1", "alert", 0.0, at_ms=2_000, why="alert e2 scored 0.000")  # no level change
    with db.sessions() as s:
        history = s.execute(select(RatingChange).order_by(RatingChange.id)).scalars().all()
        assert [(h.account_id, h.level, h.why) for h in history] == [("acc-1", "medium", "alert e1 scored 0.900")]
        assert history[0].score == pytest.approx(0.54)
        case = s.execute(select(Case).where(Case.account_id == "acc-1")).unique().scalar_one()
        assert case.risk_level == "medium" and case.risk_score == pytest.approx(0.54, abs=1e-3)

    until = utcnow() + timedelta(hours=1)
    with db.transaction() as s:
        cases.override_rating(s, "acc-1", "critical", "known mule network", until, actor)
    with db.sessions() as s:
        row = s.get(RatingRow, "acc-1")
        assert ratings.level(row) == "critical"
        assert row.level == "medium"                       # the computed level is kept under the override
        assert row.override_by == user.id and row.override_reason == "known mule network"
        assert s.execute(select(Case.risk_level).where(Case.account_id == "acc-1")).scalar_one() == "critical"

    # the override wins over the computed level while it lives, whichever way that moves
    with db.transaction() as s:
        row = ratings.apply_signal(s, "acc-1", "alert", 1.0, at_ms=3_000, why="alert e3 scored 1.000")
        assert row.level == "high" and ratings.level(row) == "critical"
        row = ratings.apply_signal(s, "acc-1", "false_positive", None, why="reviewer: false positive")
        assert ratings.level(row) == "critical"
    monkeypatch.setattr(ratings, "utcnow", lambda: until - timedelta(seconds=1))
    with db.sessions() as s:
        assert ratings.level(s.get(RatingRow, "acc-1")) == "critical"

    # past the expiry the shown level falls back to the computed one
    monkeypatch.setattr(ratings, "utcnow", lambda: until + timedelta(seconds=1))
    with db.sessions() as s:
        row = s.get(RatingRow, "acc-1")
        assert row.override_level == "critical"            # still stored, no longer live
        assert ratings.level(row) == row.level == "high"
    assert ratings.level(None) == "low"

    # a change of the shown level after the expiry is recorded, with why, and copied to the case
    with db.transaction() as s:
        n_before = s.query(RatingChange).count()
        row = ratings.apply_signal(s, "acc-1", "confirmed", None, why="reviewer: confirmed")
        assert ratings.level(row) == "critical"
    with db.sessions() as s:
        changes = s.execute(select(RatingChange).order_by(RatingChange.id)).scalars().all()
        assert len(changes) == n_before + 1
        assert (changes[-1].account_id, changes[-1].level, changes[-1].why) == (
            "acc-1", "critical", "reviewer: confirmed")
        assert s.execute(select(Case.risk_level).where(Case.account_id == "acc-1")).scalar_one() == "critical"


def test_override_refuses_bad_level_and_past_expiry(db, fast_passwords):
    from workbench import auth, cases
    from workbench.models import utcnow

    with db.transaction() as s:
        user = auth.create_user(s, "rita", "a-long-password", "reviewer")
    actor = cases.Actor(user)
    with db.transaction() as s, pytest.raises(cases.WorkError, match="a level is one of"):
        cases.override_rating(s, "acc-1", "extreme", "why", utcnow() + timedelta(hours=1), actor)
    with db.transaction() as s, pytest.raises(cases.WorkError, match="in the future"):
        cases.override_rating(s, "acc-1", "high", "why", utcnow() - timedelta(seconds=1), actor)
    with db.transaction() as s, pytest.raises(cases.WorkError, match="note is required"):
        cases.override_rating(s, "acc-1", "high", "  ", utcnow() + timedelta(hours=1), actor)
