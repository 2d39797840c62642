"""The audit trail page (approvers and admins): newest first, filtered by actor, action or object."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench import audit
from workbench.models import AuditRow
from workbench.web.deps import PageUser, db_session, page_user

router = APIRouter(tags=["audit"], include_in_schema=False)


@router.get("/audit")
def audit_page(request: Request, actor: str = "", action: str = "", object_id: str = "",
               before: int = Query(0, ge=0), pu: PageUser = Depends(page_user("approver")),
               session: Session = Depends(db_session, scope="function")):
    """The audit trail, 100 rows a page, with the chain's verification."""
    q = select(AuditRow)
    if actor:
        q = q.where(AuditRow.actor == actor)
    if action:
        q = q.where(AuditRow.action == action)
    if object_id:
        q = q.where(AuditRow.object_id == object_id)
    if before:
        q = q.where(AuditRow.id < before)
    rows = session.execute(q.order_by(AuditRow.id.desc()).limit(100)).scalars().all()
    verdict = audit.verify(session) if request.query_params.get("verify") == "1" else None
    return request.app.state.templates.TemplateResponse(
        request, "audit.html", {"user": pu.user, "csrf": pu.web.csrf, "rows": rows, "verdict": verdict,
                                "filters": {"actor": actor, "action": action, "object_id": object_id},
                                "next": rows[-1].id if len(rows) == 100 else None, "active": "audit"})
