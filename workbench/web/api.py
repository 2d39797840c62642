"""The JSON API (``/api/v1``) for dashboards and existing case managers; OpenAPI at ``/api/openapi.json``.

Authenticated by per-user bearer tokens (``txwatch users token NAME``); each route
declares the role it needs. Errors are ``{"detail": "..."}`` with a status code.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from workbench import cases, queue
from workbench.casefile import case_file, case_summary, rating_view
from workbench.web.deps import api_user, db_session

router = APIRouter(prefix="/api/v1", tags=["api"])

Decision = Literal["false_positive", "confirmed", "escalated"]
Level = Literal["low", "medium", "high", "critical"]


class Strict(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class CaseOut(BaseModel):
    """A case as the queue lists it."""

    id: int
    account_id: str
    status: str
    assignee: str | None
    lock_expires_at: str | None
    opened_at: str | None
    updated_at: str | None
    closed_at: str | None
    decision: str | None
    alerts: int
    open_alerts: int
    max_score: float
    top_reason: str | None
    model_version: str | None
    risk_score: float
    risk_level: str
    last_alert_at: str | None


class CasePage(BaseModel):
    """One page of cases and the cursor of the next (``after``)."""

    cases: list[CaseOut]
    next: str | None


class CaseFileOut(BaseModel):
    """A case with its alerts (reasons in words), decisions, notes, rating, timeline and audit trail."""

    case: CaseOut
    decided_by: str | None
    approved_by: str | None
    alerts: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    rating: dict[str, Any]
    suppression: dict[str, Any] | None
    timeline: list[dict[str, Any]]
    audit: list[dict[str, Any]]


class DisposeIn(Strict):
    """A disposition: of one alert when ``event_id`` is given, else of the whole case."""

    decision: Decision
    note: str = Field(min_length=1, max_length=cases.MAX_NOTE)
    event_id: str | None = Field(None, min_length=1, description="one alert of the case; leave it out for the whole case")


class NoteIn(Strict):
    """A note, or an approval's or rejection's reason."""

    note: str = Field(min_length=1, max_length=cases.MAX_NOTE)


class AssignIn(Strict):
    """Who gets the case."""

    username: str


class OverrideIn(Strict):
    """A reviewer's override of an account's risk level."""

    level: Level
    reason: str = Field(min_length=1, max_length=cases.MAX_NOTE)
    days: float = Field(30.0, gt=0, le=3650)


class RatingOut(BaseModel):
    """An account's risk rating, a live override and the history of its level."""

    account_id: str
    level: str
    score: float
    rated_level: str
    confirmed: int
    override: dict[str, Any] | None
    history: list[dict[str, Any]]


def _policy(request: Request) -> cases.Policy:
    return request.app.state.policy


@router.get("/cases", response_model=CasePage)
def list_cases(status: str = "active", sort: str = "risk", reason: str = "", model: str = "", assignee: str = "",
               account: str = "", level: str = "", suppressed: bool = False, after: str = "",
               limit: int = Query(50, ge=1, le=200), actor=Depends(api_user("viewer")),
               session: Session = Depends(db_session, scope="function")):
    """Cases, filtered and sorted like the queue page (sort: risk, score, age, recent)."""
    f = queue.QueueFilter(status=status, sort=sort, reason=reason, model_version=model, assignee=assignee,
                          account=account, level=level, suppressed=suppressed, limit=limit, after=after)
    rows, nxt = queue.page(session, f)
    if f.errors:
        raise cases.WorkError("; ".join(f.errors))
    return {"cases": [case_summary(c) for c in rows], "next": nxt}


@router.get("/cases/{case_id}", response_model=CaseFileOut)
def get_case(case_id: int, actor=Depends(api_user("viewer")), session: Session = Depends(db_session, scope="function")):
    """One case in full."""
    cf = case_file(session, case_id)
    cases.viewed(session, case_id, actor)
    return cf


@router.post("/cases/{case_id}/claim", response_model=CaseOut)
def claim(request: Request, case_id: int, actor=Depends(api_user("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Claim the case (locked to the token's user)."""
    return case_summary(cases.claim(session, case_id, actor, _policy(request)))


@router.post("/cases/{case_id}/release", response_model=CaseOut)
def release(case_id: int, actor=Depends(api_user("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Give the case back to the queue."""
    return case_summary(cases.release(session, case_id, actor))


@router.post("/cases/{case_id}/assign", response_model=CaseOut)
def assign(request: Request, case_id: int, body: AssignIn, actor=Depends(api_user("approver")),
           session: Session = Depends(db_session, scope="function")):
    """Give the case to a reviewer."""
    return case_summary(cases.assign(session, case_id, body.username, actor, _policy(request)))


@router.post("/cases/{case_id}/dispose", response_model=CaseOut)
def dispose(request: Request, case_id: int, body: DisposeIn, actor=Depends(api_user("reviewer")),
            session: Session = Depends(db_session, scope="function")):
    """Dispose one alert (``event_id``) or the whole case; the token's user must hold the case's lock."""
    if body.event_id is not None:
        cases.dispose_alert(session, case_id, body.event_id, body.decision, body.note, actor, _policy(request))
        return case_summary(session.get(cases.Case, case_id))
    return case_summary(cases.dispose_case(session, case_id, body.decision, body.note, actor, _policy(request)))


@router.post("/cases/{case_id}/approve", response_model=CaseOut)
def approve(request: Request, case_id: int, body: NoteIn, actor=Depends(api_user("approver")),
            session: Session = Depends(db_session, scope="function")):
    """Approve a decision waiting for a second person."""
    return case_summary(cases.approve(session, case_id, body.note, actor, _policy(request)))


@router.post("/cases/{case_id}/reject", response_model=CaseOut)
def reject(request: Request, case_id: int, body: NoteIn, actor=Depends(api_user("approver")),
           session: Session = Depends(db_session, scope="function")):
    """Send a decision back to its reviewer."""
    return case_summary(cases.reject(session, case_id, body.note, actor, _policy(request)))


@router.post("/cases/{case_id}/notes")
def add_note(case_id: int, body: NoteIn, actor=Depends(api_user("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Add a note to the case."""
    n = cases.add_note(session, case_id, body.note, actor)
    return {"id": n.id, "case_id": case_id}


@router.get("/ratings/{account_id}", response_model=RatingOut)
def get_rating(account_id: str, actor=Depends(api_user("viewer")), session: Session = Depends(db_session, scope="function")):
    """An account's risk rating."""
    return rating_view(session, account_id)


@router.post("/ratings/{account_id}", response_model=RatingOut)
def override_rating(account_id: str, body: OverrideIn, actor=Depends(api_user("reviewer")),
                    session: Session = Depends(db_session, scope="function")):
    """Override an account's risk level until an expiry, with a reason."""
    until = datetime.now(timezone.utc) + timedelta(days=body.days)
    cases.override_rating(session, account_id, body.level, body.reason, until, actor)
    return rating_view(session, account_id)


@router.get("/stats")
def get_stats(request: Request, actor=Depends(api_user("viewer")), session: Session = Depends(db_session, scope="function")):
    """The dashboard's figures."""
    from workbench.web.routes_dashboard import figures

    return figures(request, session)

