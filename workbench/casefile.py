"""Everything about one case, assembled once for the case page, the API and the SAR package."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench import ratings
from workbench.cases import NotFound, active_suppression
from workbench.explain import explain
from workbench.models import AlertRecord, AuditRow, Case, Decision, Note, Rating, RatingChange, User


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(timezone.utc).isoformat(timespec="seconds") if at else None


def _ms_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def case_summary(case: Case) -> dict[str, Any]:
    """A case as the queue and the API list it."""
    return {"id": case.id, "account_id": case.account_id, "status": case.status,
            "assignee": case.assignee.username if case.assignee else None,
            "lock_expires_at": _iso(case.lock_expires_at), "opened_at": _iso(case.opened_at),
            "updated_at": _iso(case.updated_at), "closed_at": _iso(case.closed_at), "decision": case.decision,
            "alerts": case.alert_count, "open_alerts": case.open_alerts, "max_score": round(case.max_score, 4),
            "top_reason": case.top_reason, "model_version": case.model_version,
            "risk_score": round(case.risk_score, 4), "risk_level": case.risk_level,
            "last_alert_at": _ms_iso(case.last_alert_ms) if case.last_alert_ms else None}


def alert_view(a: AlertRecord, users: dict[int, str]) -> dict[str, Any]:
    """An alert of record with its reasons in words."""
    return {"event_id": a.event_id, "ts": a.ts, "at": _ms_iso(a.ts), "score": a.score, "threshold": a.threshold,
            "model_version": a.model_version, "event": a.event, "scenario": a.scenario,
            "reasons": explain(a.reasons or [], a.features or {}, a.event or {}),
            "decision": a.decision, "decided_by": users.get(a.decided_by) if a.decided_by else None,
            "decided_at": _iso(a.decided_at)}


def rating_view(session: Session, account_id: str) -> dict[str, Any]:
    """An account's rating, a live override and the history of its level."""
    row = session.get(Rating, account_id)
    history = session.execute(select(RatingChange).where(RatingChange.account_id == account_id)
                              .order_by(RatingChange.id.desc()).limit(50)).scalars().all()
    override = None
    if row is not None and row.override_level:
        override = {"level": row.override_level, "reason": row.override_reason, "until": _iso(row.override_until),
                    "active": ratings.level(row) == row.override_level and row.override_until is not None}
    return {"account_id": account_id, "level": ratings.level(row), "score": round(row.score, 4) if row else 0.0,
            "rated_level": row.level if row else "low", "confirmed": row.confirmed if row else 0,
            "override": override,
            "history": [{"at": _iso(h.at), "level": h.level, "score": round(h.score, 4), "why": h.why} for h in history]}


def case_file(session: Session, case_id: int) -> dict[str, Any]:
    """The case, its alerts (with reasons in words), decisions, notes, the account's rating and the audit trail."""
    case = session.get(Case, case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    users = dict(session.execute(select(User.id, User.username)).all())
    alerts = session.execute(select(AlertRecord).where(AlertRecord.case_id == case.id)
                             .order_by(AlertRecord.ts.asc())).scalars().all()
    decisions = session.execute(select(Decision).where(Decision.case_id == case.id).order_by(Decision.id)).scalars().all()
    notes = session.execute(select(Note).where(Note.case_id == case.id).order_by(Note.id)).scalars().all()
    trail = session.execute(select(AuditRow).where(AuditRow.object_type == "case", AuditRow.object_id == str(case.id))
                            .order_by(AuditRow.id)).scalars().all()
    alert_ids = [a.event_id for a in alerts]
    alert_trail = session.execute(select(AuditRow).where(AuditRow.object_type == "alert",
                                                         AuditRow.object_id.in_(alert_ids)).order_by(AuditRow.id)
                                  ).scalars().all() if alert_ids else []
    supp = active_suppression(session, case.account_id)
    audit_rows = sorted([*trail, *alert_trail], key=lambda r: r.id)
    timeline = sorted(
        [{"at": _ms_iso(a.ts), "kind": "alert", "text": f"{a.event.get('type', 'event')} of "
          f"${float(a.event.get('usd_value') or 0):,.0f} scored {a.score:.3f}", "ref": a.event_id} for a in alerts]
        + [{"at": _iso(d.at), "kind": d.kind, "text": f"{d.user.username}: {d.decision or ''} {d.note}".strip(),
            "ref": d.event_id} for d in decisions]
        + [{"at": _iso(n.at), "kind": "note", "text": f"{n.user.username}: {n.body}", "ref": None} for n in notes],
        key=lambda x: x["at"] or "")
    return {
        "case": case_summary(case),
        "decided_by": users.get(case.decided_by) if case.decided_by else None,
        "approved_by": users.get(case.approved_by) if case.approved_by else None,
        "alerts": [alert_view(a, users) for a in alerts],
        "decisions": [{"at": _iso(d.at), "kind": d.kind, "event_id": d.event_id, "decision": d.decision,
                       "note": d.note, "by": d.user.username} for d in decisions],
        "notes": [{"at": _iso(n.at), "by": n.user.username, "body": n.body} for n in notes],
        "rating": rating_view(session, case.account_id),
        "suppression": ({"reason": supp.reason, "until": _iso(supp.until)} if supp else None),
        "timeline": timeline,
        "audit": [{"id": r.id, "at": _iso(r.at), "actor": r.actor, "action": r.action, "object": f"{r.object_type} {r.object_id}",
                   "before": r.before, "after": r.after, "hash": r.hash} for r in audit_rows],
    }
