"""The workbench test bench: one app on its own database and Redis key prefix, and helpers
that drive it as people and workers do (shared by the workbench tests; fixtures in conftest)."""

from __future__ import annotations

import itertools
import re
import uuid
from typing import Any

import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from stream.core.pipeline import BatchResult
from stream.events.alerts import Alert
from stream.settings import load_settings
from workbench import auth
from workbench.casefile import case_summary
from workbench.db import Database
from workbench.models import AlertRecord, AuditRow, Case, Decision, Note, OutboxMessage, Rating, User
from workbench.web.app import create_app

T0 = 1767571200000          # 2026-01-05 00:00 UTC
MINUTE = 60_000
ROLE_OF = {"vera": "viewer", "rita": "reviewer", "rick": "reviewer", "abe": "approver", "amy": "approver",
           "ada": "admin"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def password(name: str) -> str:
    """The test password of user ``name``."""
    return f"{name}-password-1"


class Bench:
    """One workbench app on its own database and Redis key prefix, and helpers to drive it."""

    def __init__(self, database_url: str, redis_url: str, tmp_path, **overrides: Any) -> None:
        self.prefix = f"wbt{uuid.uuid4().hex[:12]}"   # a key prefix of this test's own
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.settings = load_settings(database_url=database_url, redis_url=redis_url, redis_prefix=self.prefix,
                                      model_dir=str(tmp_path / "no-model"), **overrides)
        self.redis = redis_lib.Redis.from_url(redis_url)
        self.db = Database.from_settings(self.settings)
        self.app = create_app(self.settings, db=self.db, redis_client=self.redis, background=False)
        self.store = self.app.state.store
        self.offsets: dict[str, int] = {}
        self.users: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self._clients: list[TestClient] = []
        self._ids = itertools.count()

    # apps and clients
    def variant(self, **overrides: Any):
        """Another app on the same database and Redis, with some settings changed."""
        settings = load_settings(**{**self.settings.model_dump(), **overrides})
        return create_app(settings, db=self.db, redis_client=self.redis, background=False)

    def client(self, app=None, **kwargs: Any) -> TestClient:
        """A browser of its own (its own cookies); redirects are not followed."""
        c = TestClient(app or self.app, follow_redirects=False, **kwargs)
        c.__enter__()
        self._clients.append(c)
        return c

    def close(self) -> None:
        for c in self._clients:
            c.__exit__(None, None, None)
        self.db.dispose()
        self.redis.close()

    # users, sessions, tokens
    def user(self, name: str) -> int:
        """User ``name`` (role from ``ROLE_OF``), created on first use; their id."""
        if name not in self.users:
            with self.db.transaction() as s:
                self.users[name] = auth.create_user(s, name, password(name), ROLE_OF[name]).id
        return self.users[name]

    def token(self, name: str) -> str:
        """An API token of user ``name``."""
        if name not in self.tokens:
            self.user(name)
            with self.db.transaction() as s:
                self.tokens[name] = auth.issue_token(s, s.get(User, self.users[name]), "tests")
        return self.tokens[name]

    def api(self, name: str) -> dict[str, str]:
        """Request headers with ``name``'s bearer token."""
        return {"Authorization": f"Bearer {self.token(name)}"}

    @staticmethod
    def csrf(page_text: str) -> str:
        """The CSRF token of a page's forms."""
        m = CSRF_FIELD.search(page_text)
        assert m, "no CSRF field on the page"
        return m.group(1)

    def login(self, client: TestClient, name: str, pw: str | None = None, next_url: str = "/"):
        """Sign in through the form (its pre-login CSRF cookie and token); the POST's response."""
        if pw is None:
            self.user(name)
            pw = password(name)
        form = client.get("/login")
        assert form.status_code == 200
        return client.post("/login", data={"username": name, "password": pw, "csrf": self.csrf(form.text),
                                           "next": next_url})

    def browser(self, name: str, app=None, **kwargs: Any) -> TestClient:
        """A client signed in as ``name``."""
        c = self.client(app, **kwargs)
        r = self.login(c, name)
        assert r.status_code == 303, r.text
        return c

    def page_csrf(self, client: TestClient, path: str = "/cases") -> str:
        """The signed-in session's CSRF token, read from a page."""
        r = client.get(path)
        assert r.status_code == 200, r.text
        return self.csrf(r.text)

    # alerts
    def alert(self, account: str, *, event_id: str | None = None, score: float = 0.9, ts: int | None = None,
              reason: str = "out_balance_ratio", pkey: str = "ev:0", **event_fields: Any) -> Alert:
        """One alert as the worker makes it (a withdrawal that emptied the account)."""
        n = next(self._ids)
        eid = event_id or f"e{n}"
        ts = T0 + n * MINUTE if ts is None else ts
        event = {"event_id": eid, "type": "withdrawal", "usd_value": 5000.0, "amount": 0.1, "asset": "BTC",
                 "account_id": account, "ts": ts, "device_id": "dev-1", "counterparty": "addr-1", **event_fields}
        return Alert(eid, account, ts, score, 0.5, "m1", [(reason, 1.2), ("new_device", 0.4)], event, pkey,
                     {"out_balance_ratio": 0.97, "new_device": 1.0})

    def commit(self, alerts: list[Alert], pkey: str = "ev:0") -> list[str]:
        """Write a batch as the worker does (the next offsets of ``pkey``); the ids Redis added."""
        first = self.offsets.get(pkey, -1)
        last = first + max(1, len(alerts))
        added = self.store.commit(BatchResult(pkey, first, last, alerts=alerts))
        self.offsets[pkey] = last
        return added

    def write_alerts(self, n: int, accounts: list[str], pkey: str = "ev:0", **kw: Any) -> list[Alert]:
        """``n`` alerts round-robin over ``accounts``, written in one batch."""
        alerts = [self.alert(accounts[i % len(accounts)], pkey=pkey, **kw) for i in range(n)]
        self.commit(alerts, pkey)
        return alerts

    def build(self):
        """One pass of the case builder."""
        return self.app.state.builder.run_once()

    # reading the database
    def case_of(self, account: str) -> int:
        """The id of the account's open case."""
        with self.db.sessions() as s:
            cid = s.execute(select(Case.id).where(Case.account_id == account, Case.status != "closed")).scalar()
        assert cid is not None, f"no open case of {account}"
        return cid

    def count(self, model, *where) -> int:
        with self.db.sessions() as s:
            return s.execute(select(func.count()).select_from(model).where(*where)).scalar()

    def audit_actions(self, *where) -> list[str]:
        with self.db.sessions() as s:
            return list(s.execute(select(AuditRow.action).where(*where).order_by(AuditRow.id)).scalars())

    def snapshot(self, case_id: int) -> dict[str, Any]:
        """Everything an action on the case could change."""
        with self.db.sessions() as s:
            case = s.get(Case, case_id)
            alerts = s.execute(select(AlertRecord.event_id, AlertRecord.decision, AlertRecord.decided_by)
                               .where(AlertRecord.case_id == case_id).order_by(AlertRecord.event_id)).all()
            return {"case": case_summary(case), "decided_by": case.decided_by, "approved_by": case.approved_by,
                    "alerts": [tuple(a) for a in alerts],
                    "decisions": s.execute(select(func.count()).select_from(Decision)
                                           .where(Decision.case_id == case_id)).scalar(),
                    "notes": s.execute(select(func.count()).select_from(Note).where(Note.case_id == case_id)).scalar(),
                    "outbox": s.execute(select(func.count()).select_from(OutboxMessage)).scalar(),
                    "ratings": [tuple(r) for r in s.execute(select(Rating.account_id, Rating.score, Rating.confirmed,
                                                                   Rating.override_level)).all()]}
