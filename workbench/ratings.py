"""Stored per-account risk ratings: :mod:`workbench.risk` applied to the ``ratings`` table.

The case builder feeds every alert it brings in (event time, calibrated score), the
workbench every confirmed or false-positive disposition. A change of level is written to
``rating_history`` with why, and copied to the account's open case so the queue can sort
and filter by it from an index.
"""

from __future__ import annotations

from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from workbench.models import Case, Rating, RatingChange, utcnow
from workbench.risk import Rating as RatingState
from workbench.risk import effective_level, update


def state_of(row: Rating | None) -> RatingState:
    """The pure rating of a stored row."""
    if row is None:
        return RatingState()
    return RatingState(row.score, row.level, row.level_since_ms, row.updated_ms, row.confirmed)


def level(row: Rating | None) -> str:
    """The level shown for an account: a live override, else its rating's."""
    if row is None:
        return "low"
    live = row.override_until is not None and row.override_until > utcnow()
    return effective_level(row.level, row.override_level, live)


def apply_signal(session: Session, account_id: str, signal: str, p: float | None, *, at_ms: int | None = None,
                 why: str) -> Rating:
    """Update the account's rating with one signal; record a level change; return the row."""
    row = session.get(Rating, account_id)
    if row is None:
        row = Rating(account_id=account_id, score=0.0, level="low", level_since_ms=0, updated_ms=0, confirmed=0)
        session.add(row)
    old_level = level(row)
    new = update(state_of(row), signal, at_ms if at_ms is not None else 0, p or 0.0)
    row.score, row.level, row.level_since_ms, row.updated_ms, row.confirmed = (
        new.score, new.level, new.level_since_ms, new.updated_ms, new.confirmed)
    if level(row) != old_level:
        session.add(RatingChange(account_id=account_id, score=new.score, level=level(row), why=why))
    sync_cases(session, row)
    return row


def sync_cases(session: Session, row: Rating) -> None:
    """Copy the account's score and shown level to its open case."""
    session.execute(sql_update(Case).where(Case.account_id == row.account_id, Case.status != "closed")
                    .values(risk_score=row.score, risk_level=level(row)))
