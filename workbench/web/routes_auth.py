"""Sign in and out. The login form is CSRF-protected by a double-submit cookie; failed
attempts are limited per user name and address; every sign-in and refusal is audited."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from workbench import audit, auth
from workbench.web.deps import COOKIE, PRE_COOKIE, client_address, db_session

router = APIRouter(tags=["sign-in"], include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a local path is a place to go after signing in (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_page(request: Request, *, error: str | None = None, status: int = 200, next_url: str = "/",
                username: str = ""):
    token = secrets.token_urlsafe(24)
    response = request.app.state.templates.TemplateResponse(
        request, "login.html", {"error": error, "csrf": token, "next": next_url, "username": username, "user": None,
                                "expired": request.query_params.get("expired") == "1"}, status_code=status)
    response.set_cookie(PRE_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        max_age=3600)
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/"):  # noqa: A002 - the query parameter's name
    """The sign-in page."""
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""), csrf: str = Form(""),
          next: str = Form("/"), session: Session = Depends(db_session, scope="function")):  # noqa: A002
    """Check the password; on success a new session cookie (HttpOnly, SameSite, Secure under TLS)."""
    address = client_address(request)
    if not auth.csrf_ok(request.cookies.get(PRE_COOKIE, ""), csrf):
        return _login_page(request, error="The sign-in form expired; please try again.", status=403,
                           next_url=_safe_next(next), username=username)
    limiter = request.app.state.limiter
    wait = limiter.blocked_for(username, address)
    if wait > 0:
        audit.record(session, username or "-", "login_blocked", "user", username or "-", address=address)
        return _login_page(request, error=f"Too many failed attempts; try again in {int(wait) + 1} seconds.",
                           status=429, next_url=_safe_next(next), username=username)
    user = auth.find_user(session, username)
    if not auth.check_password(user, password) or not user.active:
        limiter.failed(username, address)
        audit.record(session, username or "-", "login_failed", "user", username or "-", address=address)
        return _login_page(request, error="Wrong user name or password.", status=401, next_url=_safe_next(next),
                           username=username)
    limiter.succeeded(username, address)
    auth.purge_sessions(session, request.app.state.settings.ui_session_ttl_s)
    cookie, _ = auth.open_session(session, user)
    audit.record(session, user.username, "login", "user", user.username, address=address)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="lax", secure=request.url.scheme == "https",
                        path="/")
    response.delete_cookie(PRE_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), session: Session = Depends(db_session, scope="function")):
    """End the session. Its CSRF token must match: another site cannot sign a reviewer out."""
    cookie = request.cookies.get(COOKIE)
    web = auth.session_user(session, cookie, request.app.state.settings.ui_session_ttl_s)
    if web is not None:
        if not auth.csrf_ok(web.csrf, csrf):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")
        audit.record(session, web.user.username, "logout", "user", web.user.username, address=client_address(request))
        auth.close_session(session, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
