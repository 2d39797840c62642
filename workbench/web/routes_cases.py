"""The queue, the case view, and reviewers' actions on a case (each a CSRF-checked form POST
that redirects back to the case: post/redirect/get)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from workbench import cases, queue, sar
from workbench.casefile import case_file, case_summary
from workbench.models import DECISIONS, LEVELS
from workbench.web.deps import PageUser, csrf_checked, db_session, page_user

router = APIRouter(tags=["cases"], include_in_schema=False)


def _back(case_id: int, flash: str) -> RedirectResponse:
    return RedirectResponse(f"/cases/{case_id}?done={flash}", status_code=303)


@router.get("/cases")
def queue_page(request: Request, status: str = "active", sort: str = "risk", reason: str = "", model: str = "",
               assignee: str = "", account: str = "", level: str = "", suppressed: bool = False,
               after: str = "", limit: int = Query(50, ge=1, le=200),
               pu: PageUser = Depends(page_user("viewer")), session: Session = Depends(db_session, scope="function")):
    """The queue: cases filtered and sorted, one keyset page at a time."""
    f = queue.QueueFilter(status=status, sort=sort, reason=reason, model_version=model,
                          assignee=pu.user.username if assignee == "me" else assignee, account=account.strip(),
                          level=level, suppressed=suppressed, limit=limit, after=after)
    rows, nxt = queue.page(session, f)
    params = {k: v for k, v in {"status": f.status, "sort": f.sort, "reason": reason, "model": model,
                                "assignee": assignee, "account": account, "level": level,
                                "suppressed": "true" if suppressed else ""}.items() if v}
    return request.app.state.templates.TemplateResponse(
        request, "queue.html", {"user": pu.user, "csrf": pu.web.csrf, "rows": [case_summary(c) for c in rows],
                                "next": nxt, "f": f, "params": params, "facets": queue.facets(session),
                                "sorts": queue.SORTS, "levels": LEVELS, "active": "queue"})


@router.get("/cases/{case_id}")
def case_page(request: Request, case_id: int, done: str = "", pu: PageUser = Depends(page_user("viewer")),
              session: Session = Depends(db_session, scope="function")):
    """The case: alerts and reasons in words, timeline, decisions, notes, rating, audit trail, actions."""
    cf = case_file(session, case_id)
    cases.viewed(session, case_id, pu.actor)
    holds_lock = (cf["case"]["assignee"] == pu.user.username and cf["case"]["status"] == "in_review")
    return request.app.state.templates.TemplateResponse(
        request, "case.html", {"user": pu.user, "csrf": pu.web.csrf, "cf": cf, "c": cf["case"], "done": done,
                               "holds_lock": holds_lock, "decisions": DECISIONS, "levels": LEVELS,
                               "four_eyes": request.app.state.policy.four_eyes, "active": "queue"})


@router.post("/cases/{case_id}/claim")
def claim(request: Request, case_id: int, pu: PageUser = Depends(csrf_checked("reviewer")),
          session: Session = Depends(db_session, scope="function")):
    """Claim the case (locked to you)."""
    cases.claim(session, case_id, pu.actor, request.app.state.policy)
    return _back(case_id, "claimed")


@router.post("/cases/{case_id}/release")
def release(case_id: int, pu: PageUser = Depends(csrf_checked("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Give the case back to the queue."""
    cases.release(session, case_id, pu.actor)
    return _back(case_id, "released")


@router.post("/cases/{case_id}/assign")
def assign(request: Request, case_id: int, username: str = Form(...),
           pu: PageUser = Depends(csrf_checked("approver")), session: Session = Depends(db_session, scope="function")):
    """Give the case to a reviewer."""
    cases.assign(session, case_id, username, pu.actor, request.app.state.policy)
    return _back(case_id, "assigned")


@router.post("/cases/{case_id}/alerts/{event_id}/dispose")
def dispose_alert(request: Request, case_id: int, event_id: str, decision: str = Form(...), note: str = Form(""),
                  pu: PageUser = Depends(csrf_checked("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Dispose one alert of the case, with a note."""
    cases.dispose_alert(session, case_id, event_id, decision, note, pu.actor, request.app.state.policy)
    return _back(case_id, "alert-disposed")


@router.post("/cases/{case_id}/dispose")
def dispose_case(request: Request, case_id: int, decision: str = Form(...), note: str = Form(""),
                 pu: PageUser = Depends(csrf_checked("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Dispose the whole case, with a note."""
    cases.dispose_case(session, case_id, decision, note, pu.actor, request.app.state.policy)
    return _back(case_id, "case-disposed")


@router.post("/cases/{case_id}/approve")
def approve(request: Request, case_id: int, note: str = Form(""), pu: PageUser = Depends(csrf_checked("approver")),
            session: Session = Depends(db_session, scope="function")):
    """Approve a decision waiting for a second person (four-eyes)."""
    cases.approve(session, case_id, note, pu.actor, request.app.state.policy)
    return _back(case_id, "approved")


@router.post("/cases/{case_id}/reject")
def reject(request: Request, case_id: int, note: str = Form(""), pu: PageUser = Depends(csrf_checked("approver")),
           session: Session = Depends(db_session, scope="function")):
    """Send a decision back to its reviewer."""
    cases.reject(session, case_id, note, pu.actor, request.app.state.policy)
    return _back(case_id, "rejected")


@router.post("/cases/{case_id}/notes")
def note(case_id: int, body: str = Form(""), pu: PageUser = Depends(csrf_checked("reviewer")),
         session: Session = Depends(db_session, scope="function")):
    """Add a note."""
    cases.add_note(session, case_id, body, pu.actor)
    return _back(case_id, "noted")


def _until(days: float) -> datetime:
    if not 0 < days <= 3650:
        raise cases.WorkError("the expiry is 1 to 3650 days ahead")
    return datetime.now(timezone.utc) + timedelta(days=days)


@router.post("/cases/{case_id}/suppress")
def suppress(case_id: int, reason: str = Form(""), days: float = Form(7.0),
             pu: PageUser = Depends(csrf_checked("approver")), session: Session = Depends(db_session, scope="function")):
    """Keep the account's cases out of the queue for ``days``, with a reason."""
    c = case_file(session, case_id)["case"]
    cases.suppress(session, c["account_id"], reason, _until(days), pu.actor)
    return _back(case_id, "suppressed")


@router.post("/cases/{case_id}/rating")
def override(case_id: int, level: str = Form(...), reason: str = Form(""), days: float = Form(30.0),
             pu: PageUser = Depends(csrf_checked("reviewer")), session: Session = Depends(db_session, scope="function")):
    """Override the account's risk level until an expiry, with a reason."""
    c = case_file(session, case_id)["case"]
    cases.override_rating(session, c["account_id"], level, reason, _until(days), pu.actor)
    return _back(case_id, "rating-overridden")


@router.get("/cases/{case_id}/sar.{fmt}")
def sar_export(case_id: int, fmt: str, pu: PageUser = Depends(page_user("reviewer")),
               session: Session = Depends(db_session, scope="function")):
    """The SAR package of the case, as JSON or Markdown (a download)."""
    if fmt not in ("json", "md"):
        raise cases.NotFound(f"no export format {fmt!r} (json or md)")
    pkg = sar.package(case_file(session, case_id), exported_by=pu.user.username)
    from workbench import audit

    audit.record(session, pu.user.username, "export_sar", "case", case_id, after={"format": fmt}, address=pu.address)
    if fmt == "json":
        body, media = sar.to_json(pkg), "application/json"
    else:
        body, media = sar.to_markdown(pkg).encode(), "text/markdown; charset=utf-8"
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="txwatch-case-{case_id}.{fmt}"'})
