"""Request dependencies: the database session, who is asking, their role, CSRF.

Authentication and roles are dependencies, never an ``if`` inside a handler: a page route
declares ``Depends(page_user("reviewer"))``, an API route ``Depends(api_user("reviewer"))``.
Pages answer an unknown or expired session with a redirect to the login page and a wrong
role with 403; the API answers 401 and 403 as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from fastapi import Depends, Form, HTTPException, Request
from sqlalchemy.orm import Session

from workbench import auth
from workbench.cases import Actor
from workbench.models import User, WebSession

COOKIE = "txwatch_session"
PRE_COOKIE = "txwatch_login"   # the login form's double-submit CSRF cookie


class LoginRequired(Exception):
    """No live session: the page sends the browser to the login page."""

    def __init__(self, next_url: str, expired: bool) -> None:
        self.next_url = next_url
        self.expired = expired


class RoleRequired(Exception):
    """A live session whose role does not reach the page's."""

    def __init__(self, role: str) -> None:
        self.role = role


def db_session(request: Request) -> Iterator[Session]:
    """One session per request, in one transaction committed when the handler returns.

    Every use names ``scope="function"``: the commit then runs as the handler returns and
    *before* the response is sent. With FastAPI's default scope ("request") it ran after the
    response went out, so a browser following a sign-in's redirect could ask for the next page
    before its session row was committed, and be sent back to the login page."""
    with request.app.state.db.transaction() as session:
        yield session


def client_address(request: Request) -> str:
    """The caller's address (as uvicorn reports it, X-Forwarded-For when it trusts the proxy)."""
    return request.client.host if request.client else "unknown"


@dataclass
class PageUser:
    """The signed-in user of a page request, with their session (for its CSRF token)."""

    user: User
    web: WebSession
    address: str

    @property
    def actor(self) -> Actor:
        """The user as the actor of a case action."""
        return Actor(self.user, self.address)


def page_user(role: str) -> Callable[..., PageUser]:
    """Dependency: the page's user, who must hold ``role`` or above."""

    def dep(request: Request, session: Session = Depends(db_session, scope="function")) -> PageUser:
        cookie = request.cookies.get(COOKIE)
        web = auth.session_user(session, cookie, request.app.state.settings.ui_session_ttl_s)
        if web is None:
            raise LoginRequired(str(request.url.path), expired=bool(cookie))
        if not web.user.can(role):
            raise RoleRequired(role)
        request.state.who = (web.user.username, client_address(request))
        return PageUser(web.user, web, client_address(request))
    return dep


def csrf_checked(role: str) -> Callable[..., PageUser]:
    """Dependency for a form POST: the page's user, and the form's CSRF token must be theirs."""
    user_dep = page_user(role)

    def dep(csrf: str | None = Form(None), pu: PageUser = Depends(user_dep)) -> PageUser:
        if not auth.csrf_ok(pu.web.csrf, csrf):
            raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")
        return pu
    return dep


def api_user(role: str) -> Callable[..., Actor]:
    """Dependency: the API caller (``Authorization: Bearer <token>``), who must hold ``role``."""

    def dep(request: Request, session: Session = Depends(db_session, scope="function")) -> Actor:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        user = auth.token_user(session, token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HTTPException(401, "a valid API token is required (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not user.can(role):
            raise HTTPException(403, f"this needs the {role} role; the token's user is a {user.role}")
        request.state.who = (user.username, client_address(request))
        return Actor(user, client_address(request))
    return dep


def stream_user(role: str) -> Callable[..., User]:
    """Dependency for a long-lived response (server-sent events): checks the session in a
    short transaction of its own, so no database connection is held while the stream is open."""

    def dep(request: Request) -> User:
        with request.app.state.db.transaction() as session:
            web = auth.session_user(session, request.cookies.get(COOKIE), request.app.state.settings.ui_session_ttl_s)
            if web is None:
                raise LoginRequired(str(request.url.path), expired=False)
            if not web.user.can(role):
                raise RoleRequired(role)
            return web.user
    return dep
