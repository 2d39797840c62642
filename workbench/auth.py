"""Who is asking: passwords (argon2), browser sessions with CSRF tokens, API tokens, login limits.

Secrets are never stored: a session cookie and an API token are random 32-byte strings,
and the database keeps their sha256; passwords are argon2id hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from stream.errors import TxwatchError
from workbench.models import ROLES, ApiToken, User, WebSession, utcnow

_HASHER = PasswordHasher()
# A hash of a random password: verifying an unknown user name costs as much as a known one.
_DUMMY = _HASHER.hash(secrets.token_hex(16))
MIN_PASSWORD = 10


class AuthError(TxwatchError):
    """Credentials that are wrong, expired or not allowed."""


def hash_password(password: str) -> str:
    """argon2id hash of a password (at least ``MIN_PASSWORD`` characters)."""
    if len(password) < MIN_PASSWORD:
        raise TxwatchError(f"a password needs at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def check_password(user: User | None, password: str) -> bool:
    """Whether ``password`` is ``user``'s (constant work whether or not the user exists)."""
    try:
        return _HASHER.verify(user.password_hash if user else _DUMMY, password) and user is not None
    except (VerificationError, InvalidHashError):
        return False


def sha256(text: str) -> str:
    """Hex sha256 of a secret (what the database stores)."""
    return hashlib.sha256(text.encode()).hexdigest()


# -- users -------------------------------------------------------------------------

def create_user(session: Session, username: str, password: str, role: str) -> User:
    """A new active user; ``TxwatchError`` for a taken name, a bad role or a short password."""
    if role not in ROLES:
        raise TxwatchError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise TxwatchError("a user name is 1-64 letters, digits, '.', '-' or '_'")
    if session.execute(select(User).where(User.username == username)).scalar():
        raise TxwatchError(f"user {username!r} exists already")
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, username: str) -> User | None:
    """The user named ``username``, or None."""
    return session.execute(select(User).where(User.username == username)).scalar()


# -- browser sessions ------------------------------------------------------------------

def open_session(session: Session, user: User) -> tuple[str, WebSession]:
    """A new browser session for ``user``: (the cookie value, its row)."""
    cookie = secrets.token_urlsafe(32)
    row = WebSession(id_sha256=sha256(cookie), user_id=user.id, csrf=secrets.token_urlsafe(24))
    session.add(row)
    session.flush()
    return cookie, row


def session_user(session: Session, cookie: str | None, ttl_s: float) -> WebSession | None:
    """The live session behind a cookie (its idle time refreshed), or None if unknown or expired."""
    if not cookie:
        return None
    row = session.get(WebSession, sha256(cookie))
    if row is None:
        return None
    now = utcnow()
    if now - row.last_seen > timedelta(seconds=ttl_s) or not row.user.active:
        session.delete(row)
        return None
    if now - row.last_seen > timedelta(seconds=30):  # at most one write per half minute per session
        row.last_seen = now
    return row


def purge_sessions(session: Session, ttl_s: float) -> int:
    """Remove every session idle for longer than ``ttl_s`` (done at each sign-in, so the
    table holds live sessions only); how many went."""
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    return session.execute(delete(WebSession).where(WebSession.last_seen < cutoff)).rowcount or 0


def close_session(session: Session, cookie: str | None) -> None:
    """Log out: the session's row is removed."""
    if cookie:
        row = session.get(WebSession, sha256(cookie))
        if row is not None:
            session.delete(row)


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a form's CSRF token with the session's."""
    return bool(given) and hmac.compare_digest(expected, given)


# -- API tokens -----------------------------------------------------------------------

def issue_token(session: Session, user: User, name: str) -> str:
    """A new API token for ``user``; the secret is returned once and never stored."""
    secret = "txw_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_sha256=sha256(secret)))
    session.flush()
    return secret


def token_user(session: Session, secret: str | None) -> User | None:
    """The active user of a bearer token, or None."""
    if not secret:
        return None
    row = session.execute(select(ApiToken).where(ApiToken.token_sha256 == sha256(secret))).scalar()
    if row is None or row.revoked_at is not None or not row.user.active:
        return None
    return row.user


# -- login rate limit ---------------------------------------------------------------

class LoginLimiter:
    """At most ``attempts`` failed logins per (user name, address) in a sliding ``window_s``.

    Memory is bounded: only failures inside the window are kept, and keys whose failures
    all aged out are dropped whenever the table passes ``max_keys``.
    """

    def __init__(self, attempts: int, window_s: float = 300.0, max_keys: int = 10_000) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _trim(self, q: deque[float], now: float) -> deque[float]:
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked_for(self, username: str, address: str) -> float:
        """Seconds until another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        with self._lock:
            q = self._trim(self._failures.get((username.lower(), address), deque()), now)
            if len(q) < self.attempts:
                return 0.0
            return self.window_s - (now - q[0])

    def failed(self, username: str, address: str) -> None:
        """Count one failed attempt."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_keys:
                for key in [k for k, q in self._failures.items() if not self._trim(q, now)]:
                    del self._failures[key]
            self._failures.setdefault((username.lower(), address), deque()).append(now)

    def succeeded(self, username: str, address: str) -> None:
        """A correct password clears the count."""
        with self._lock:
            self._failures.pop((username.lower(), address), None)
