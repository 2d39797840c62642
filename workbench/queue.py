"""The review queue: cases filtered, sorted and paginated from indexes.

Pagination is by keyset (the last row's sort value and id), so page 500 costs what page 1
costs: no OFFSET scan, no scan of the table per request. The default view (every case not
closed) walks an ``(active, sort key, id)`` index in order and stops after one page; rows are
ordered by the sort key and then by id in the same direction, so the index serves both.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import and_, exists, select, tuple_
from sqlalchemy.orm import Session

from workbench.models import CASE_STATUSES, LEVELS, Case, Suppression, User, utcnow

SORTS = {
    # name: (column, descending, label)
    "risk": (Case.risk_score, True, "account risk"),
    "score": (Case.max_score, True, "highest score"),
    "age": (Case.opened_at, False, "oldest first"),
    "recent": (Case.last_alert_ms, True, "newest alert"),
}


@dataclass
class QueueFilter:
    """What the queue shows. Empty strings mean "any"."""

    status: str = "active"        # active (anything not closed), or one status, or "all"
    sort: str = "risk"
    reason: str = ""
    model_version: str = ""
    assignee: str = ""            # a user name, "none", or "" for any
    account: str = ""
    level: str = ""
    suppressed: bool = False      # also show cases of suppressed accounts
    limit: int = 50
    after: str = ""               # the keyset cursor of the previous page's last row
    errors: list[str] = field(default_factory=list)

    def normalised(self) -> "QueueFilter":
        """Unknown values replaced by defaults, each noted in ``errors``."""
        if self.sort not in SORTS:
            self.errors.append(f"unknown sort {self.sort!r}; sorted by risk")
            self.sort = "risk"
        if self.status not in ("active", "all", *CASE_STATUSES):
            self.errors.append(f"unknown status {self.status!r}; showing active cases")
            self.status = "active"
        if self.level and self.level not in LEVELS:
            self.errors.append(f"unknown level {self.level!r}; any level")
            self.level = ""
        self.limit = min(max(int(self.limit), 1), 200)
        return self


def _encode(value: Any, case_id: int) -> str:
    if hasattr(value, "isoformat"):
        value = value.isoformat()
    return base64.urlsafe_b64encode(orjson.dumps([value, case_id])).decode()


def _decode(token: str) -> tuple[Any, int] | None:
    try:
        value, case_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return value, int(case_id)
    except Exception:  # noqa: BLE001 - a tampered or stale cursor starts from the top
        return None


def page(session: Session, f: QueueFilter) -> tuple[list[Case], str | None]:
    """One page of the queue and the cursor of the next page (None at the end)."""
    f = f.normalised()
    col, desc, _ = SORTS[f.sort]
    q = select(Case)
    if f.status == "active":
        q = q.where(Case.active == 1)
    elif f.status != "all":
        q = q.where(Case.status == f.status)
    if f.reason:
        q = q.where(Case.top_reason == f.reason)
    if f.model_version:
        q = q.where(Case.model_version == f.model_version)
    if f.account:
        q = q.where(Case.account_id == f.account)
    if f.level:
        q = q.where(Case.risk_level == f.level)
    if f.assignee == "none":
        q = q.where(Case.assignee_id.is_(None))
    elif f.assignee:
        q = q.where(Case.assignee_id == select(User.id).where(User.username == f.assignee).scalar_subquery())
    if not f.suppressed:
        q = q.where(~exists().where(and_(Suppression.account_id == Case.account_id, Suppression.until > utcnow())))
    if f.after:
        cur = _decode(f.after)
        if cur is None:
            f.errors.append("the page cursor was not readable; showing the first page")
        else:
            value, last_id = cur
            if col is Case.opened_at:
                from datetime import datetime

                value = datetime.fromisoformat(value)
            key = tuple_(col, Case.id)
            q = q.where(key < tuple_(value, last_id) if desc else key > tuple_(value, last_id))
    q = q.order_by(*((col.desc(), Case.id.desc()) if desc else (col.asc(), Case.id.asc()))).limit(f.limit + 1)
    rows = list(session.execute(q).unique().scalars())
    nxt = None
    if len(rows) > f.limit:
        rows = rows[:f.limit]
        last = rows[-1]
        nxt = _encode(getattr(last, col.key), last.id)
    return rows, nxt


_FACETS: dict[str, tuple[float, dict[str, list[str]]]] = {}
FACETS_TTL_S = 60.0


def facets(session: Session) -> dict[str, list[str]]:
    """Values to filter on: top reasons and model versions of cases, and users (read at most
    once a minute per database: they change slowly)."""
    import time

    key = str(session.get_bind().url)
    hit = _FACETS.get(key)
    if hit is not None and time.monotonic() - hit[0] < FACETS_TTL_S:
        return hit[1]
    out = _facets(session)
    _FACETS[key] = (time.monotonic(), out)
    return out


def _facets(session: Session) -> dict[str, list[str]]:
    # DISTINCT over the (top_reason, status) and (model_version, status) indexes: no table scan.
    reasons = session.execute(select(Case.top_reason).where(Case.top_reason.is_not(None)).distinct()
                              .order_by(Case.top_reason).limit(100)).scalars().all()
    models = session.execute(select(Case.model_version).where(Case.model_version.is_not(None)).distinct()
                             .order_by(Case.model_version).limit(20)).scalars().all()
    users = session.execute(select(User.username).where(User.active.is_(True)).order_by(User.username)).scalars().all()
    return {"reasons": list(reasons), "models": list(models), "users": list(users)}
