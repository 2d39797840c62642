"""The audit trail: every action appended with who, when, what, before and after, hash-chained.

Each row's ``hash`` is the sha256 of the previous row's hash and the row's own content in
canonical JSON, so editing, deleting or reordering a stored row breaks the chain from there
on; :func:`verify` finds the first broken row. The app has no update or delete path for
audit rows, and the database refuses both (triggers, migration 0001).

>>> row = {"at": "2026-01-01T00:00:00+00:00", "actor": "ann", "action": "login", "object_type": "user",
...        "object_id": "ann", "before": None, "after": None, "address": "127.0.0.1"}
>>> chain_hash(GENESIS, row) == chain_hash(GENESIS, dict(row))
True
>>> chain_hash(GENESIS, row) == chain_hash(GENESIS, {**row, "actor": "bob"})
False
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from workbench.db import take_write_lock
from workbench.models import AuditRow, utcnow

GENESIS = "0" * 64
_CONTENT = ("at", "actor", "action", "object_type", "object_id", "before", "after", "address")


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def chain_hash(prev_hash: str, content: dict[str, Any]) -> str:
    """sha256 of the previous hash and the row's content (canonical JSON, sorted keys)."""
    body = orjson.dumps({k: content.get(k) for k in _CONTENT}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


def _content(row: AuditRow) -> dict[str, Any]:
    return {"at": _iso(row.at), "actor": row.actor, "action": row.action, "object_type": row.object_type,
            "object_id": row.object_id, "before": row.before, "after": row.after, "address": row.address}


def record(session: Session, actor: str, action: str, object_type: str, object_id: Any, *,
           before: dict | None = None, after: dict | None = None, address: str | None = None) -> AuditRow:
    """Append one audit row in ``session``'s transaction (so it commits with the action or not at all).

    Appends are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: the write
    lock, taken before the last hash is read), so the chain never forks.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7274868)"))
    else:
        take_write_lock(session)
    last = session.execute(select(AuditRow.hash).order_by(AuditRow.id.desc()).limit(1)).scalar()
    row = AuditRow(at=utcnow(), actor=actor, action=action, object_type=object_type, object_id=str(object_id),
                   before=_jsonable(before), after=_jsonable(after), address=address, prev_hash=last or GENESIS)
    row.hash = chain_hash(row.prev_hash, _content(row))
    session.add(row)
    session.flush()
    return row


def _jsonable(value: dict | None) -> dict | None:
    """A dict as it reads back from a JSON column (datetimes as ISO text)."""
    if value is None:
        return None
    return orjson.loads(orjson.dumps(value, default=str))


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found."""

    rows: int
    ok: bool
    first_bad_id: int | None = None
    problem: str | None = None
    head: str = field(default=GENESIS, compare=False)  # the last row's hash: kept elsewhere, it reveals removed last rows


def _rows(session: Session, batch: int = 5000) -> Iterator[AuditRow]:
    last = 0
    while True:
        rows = session.execute(select(AuditRow).where(AuditRow.id > last).order_by(AuditRow.id).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def verify(session: Session) -> Verdict:
    """Walk the whole chain; the first row whose link or hash does not match, if any."""
    prev = GENESIS
    n = 0
    for row in _rows(session):
        n += 1
        if row.prev_hash != prev:
            return Verdict(n, False, row.id, "its link to the row before does not match (a row was removed or reordered)")
        if chain_hash(prev, _content(row)) != row.hash:
            return Verdict(n, False, row.id, "its content does not match its hash (the row was edited)")
        prev = row.hash
    return Verdict(n, True, head=prev)
