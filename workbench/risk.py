"""Per-account risk rating: a running score from calibrated alert scores and reviewers' decisions.

Pure logic, ``update(state, signal) -> state``; the case builder applies it to every alert
it brings in (in event time), the workbench to every disposition.

* The score decays with a half-life (``HALF_LIFE_MS``, 7 days of event time).
* An alert with calibrated probability ``p`` adds evidence like an independent signal:
  ``s <- 1 - (1 - s) * (1 - ALERT_WEIGHT * p)``; a confirmed disposition adds
  ``CONFIRMED_WEIGHT``; a false positive halves the score.
* Levels: low < 0.3 <= medium < 0.6 <= high < 0.85 <= critical. A level rises at once and
  falls only after ``COOLDOWN_MS`` (24 h) at its current level, so a rating does not flap.
* A reviewer's override (a level, a reason, an expiry) replaces the level until it expires.

>>> s = Rating()
>>> s = update(s, "alert", 0, 0.9); s.level, round(s.score, 2)
('medium', 0.54)
>>> s = update(s, "confirmed", 1000); s.level
'critical'
>>> update(s, "alert", 1000 + 3 * DAY_MS, 0.0).level   # 3 days on: decayed, and past the cooldown
'high'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DAY_MS = 86_400_000
HALF_LIFE_MS = 7 * DAY_MS
COOLDOWN_MS = DAY_MS
ALERT_WEIGHT = 0.6
CONFIRMED_WEIGHT = 0.9
LEVEL_CUTS = ((0.85, "critical"), (0.6, "high"), (0.3, "medium"), (0.0, "low"))
LEVEL_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@dataclass(frozen=True)
class Rating:
    """An account's rating at ``updated_ms`` (event time)."""

    score: float = 0.0
    level: str = "low"
    level_since_ms: int = 0
    updated_ms: int = 0
    confirmed: int = 0


def level_of(score: float) -> str:
    """The level a score maps to.

    >>> level_of(0.1), level_of(0.3), level_of(0.7), level_of(0.9)
    ('low', 'medium', 'high', 'critical')
    """
    for cut, name in LEVEL_CUTS:
        if score >= cut:
            return name
    return "low"


def decayed(r: Rating, at_ms: int) -> float:
    """The score decayed to ``at_ms`` (never forward from an earlier time)."""
    dt = max(0, at_ms - r.updated_ms)
    return r.score * 0.5 ** (dt / HALF_LIFE_MS)


def update(r: Rating, signal: str, at_ms: int, p: float = 0.0) -> Rating:
    """The rating after ``signal`` (``alert`` with probability ``p``, ``confirmed``, ``false_positive``).

    Reviewers' decisions carry no event time of their own: they apply at the rating's time.
    """
    at = max(at_ms, r.updated_ms) if signal == "alert" else r.updated_ms
    s = decayed(r, at)
    confirmed = r.confirmed
    if signal == "alert":
        p = min(max(float(p), 0.0), 1.0) if p == p else 0.0
        s = 1.0 - (1.0 - s) * (1.0 - ALERT_WEIGHT * p)
    elif signal == "confirmed":
        s = 1.0 - (1.0 - s) * (1.0 - CONFIRMED_WEIGHT)
        confirmed += 1
    elif signal == "false_positive":
        s *= 0.5
    else:
        raise ValueError(f"unknown rating signal {signal!r}")
    target = level_of(s)
    level, since = r.level, r.level_since_ms
    if LEVEL_ORDER[target] > LEVEL_ORDER[level] or (target != level and at - since >= COOLDOWN_MS):
        level, since = target, at
    return replace(r, score=s, level=level, level_since_ms=since, updated_ms=at, confirmed=confirmed)


def effective_level(level: str, override_level: str | None, override_active: bool) -> str:
    """The level shown and filtered on: a live override wins."""
    return override_level if (override_level and override_active) else level
