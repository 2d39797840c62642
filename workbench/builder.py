"""The case builder: every new alert in Redis into its account's case, exactly once.

It reads each partition's alert stream (``P:{t:p}:alerts``, the workers' Redis Stream)
from where it stood, and for each entry, in one database transaction per read: inserts the
alert of record (the primary key is the event id, so an alert seen twice is not added
twice), opens the account's case or adds to its open one (at most one open case per
account, a unique index), feeds the account's risk rating, and moves its cursor for that
stream. The cursor and the alerts commit together, so a restart resumes where the last
commit left off, with nothing missed and nothing doubled. After the commit, the Redis
alert hashes it brought in are made persistent (``PERSIST``): an alert that belongs to a
case does not expire with the Redis TTL.

An alert of a suppressed account is recorded in its case like any other; the queue hides
the case while the suppression lasts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stream.events.alerts import decode_alert_hash
from workbench import ratings
from workbench.db import take_write_lock
from workbench.models import AlertRecord, Case, Cursor, utcnow

log = logging.getLogger("txwatch.workbench.builder")


@dataclass
class BuildStats:
    """What one pass brought in."""

    added: int = 0
    seen: int = 0
    missing: int = 0     # stream entries whose alert hash had already expired from Redis
    cases_opened: int = 0


def _alert_row(h: dict[str, Any], case_id: int) -> AlertRecord:
    reasons = h.get("reasons") or []
    event = h.get("event") or {}
    return AlertRecord(event_id=h["event_id"], case_id=case_id, account_id=h["account_id"], ts=int(h["ts"]),
                       score=float(h["score"]), threshold=float(h["threshold"]), model_version=h["model_version"],
                       reasons=reasons, event=event, features=h.get("features") or {},
                       partition_key="", created_ms=int(h.get("created_ms") or 0),
                       scenario=(event.get("scenario") if isinstance(event, dict) else None),
                       top_reason=reasons[0]["feature"] if reasons else None)


def _open_case(session: Session, account_id: str) -> tuple[Case, bool]:
    # Lock the account's open case before reading it (as the reviewers' actions do, cases._case),
    # so a reviewer cannot close it between this read and the alert's write.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Case.id).where(Case.account_id == account_id, Case.status != "closed")
                        .with_for_update())
    else:
        take_write_lock(session)
    case = session.execute(select(Case).where(Case.account_id == account_id, Case.status != "closed")
                           .execution_options(populate_existing=True)).unique().scalar()
    if case is not None:
        return case, False
    case = Case(account_id=account_id, status="open", alert_count=0, open_alerts=0, max_score=0.0,
                first_alert_ms=0, last_alert_ms=0)
    row = ratings.state_of(None)
    case.risk_score, case.risk_level = row.score, row.level
    session.add(case)
    session.flush()
    return case, True


def add_alert(session: Session, h: dict[str, Any], partition_key: str, stats: BuildStats) -> bool:
    """Bring one decoded alert hash into its account's case; False if it was there already."""
    if session.get(AlertRecord, h["event_id"]) is not None:
        return False
    case, opened = _open_case(session, h["account_id"])
    stats.cases_opened += opened
    alert = _alert_row(h, case.id)
    alert.partition_key = partition_key
    session.add(alert)
    case.alert_count += 1
    case.open_alerts += 1
    if alert.score >= case.max_score:
        case.max_score = alert.score
        case.top_reason = alert.top_reason
    case.first_alert_ms = alert.ts if not case.first_alert_ms else min(case.first_alert_ms, alert.ts)
    case.last_alert_ms = max(case.last_alert_ms, alert.ts)
    case.model_version = alert.model_version
    case.updated_at = utcnow()
    if case.status == "closed":  # cannot happen (only open cases are found), kept as a guard
        raise RuntimeError("an alert was added to a closed case")
    ratings.apply_signal(session, alert.account_id, "alert", alert.score, at_ms=alert.ts,
                         why=f"alert {alert.event_id} scored {alert.score:.3f}")
    return True


class CaseBuilder:
    """Brings the workers' alerts from Redis into cases (``run`` loops; ``run_once`` is one pass)."""

    def __init__(self, db, store, *, count: int = 500) -> None:
        self.db = db
        self.store = store          # a stream.adapters.redis_store.RedisStore
        self.count = count

    def _cursor(self, session: Session, stream: str) -> str:
        row = session.get(Cursor, stream)
        return row.last_id if row else "0-0"

    def _pass_partition(self, pkey: str, stats: BuildStats) -> int:
        stream = self.store.key(pkey, "alerts")
        with self.db.sessions() as session:
            last = self._cursor(session, stream)
        entries = self.store.client.xrange(stream, min=f"({last}", count=self.count) if last != "0-0" else \
            self.store.client.xrange(stream, min="-", count=self.count)
        if not entries:
            return 0
        ids = [fields[b"event_id"].decode() for _, fields in entries]
        pipe = self.store.client.pipeline(transaction=False)
        for eid in ids:
            pipe.hgetall(self.store.key(pkey, f"alert:{eid}"))
        hashes = pipe.execute()
        added: list[str] = []
        try:
            with self.db.transaction() as session:
                for eid, raw in zip(ids, hashes):
                    stats.seen += 1
                    if not raw:
                        stats.missing += 1
                        log.warning("alert %s in %s expired from Redis before the case builder read it", eid, stream)
                        continue
                    if add_alert(session, decode_alert_hash(raw), pkey, stats):
                        added.append(eid)
                row = session.get(Cursor, stream) or Cursor(stream=stream, last_id="0-0")
                row.last_id, row.updated_at = entries[-1][0].decode(), utcnow()
                session.add(row)
        except IntegrityError:
            # Another builder (a second `txwatch ui`) committed the same alerts or opened the
            # same case first: nothing was written here; the next pass starts from its cursor.
            log.info("case builder: %s was brought in concurrently; retrying from the stored cursor", stream)
            return 0
        stats.added += len(added)
        if added:
            pipe = self.store.client.pipeline(transaction=False)
            for eid in added:
                pipe.persist(self.store.key(pkey, f"alert:{eid}"))
            pipe.execute()
        return len(entries)

    def run_once(self) -> BuildStats:
        """Read every partition's stream to its end; what was brought in."""
        stats = BuildStats()
        for pkey in self.store.partitions():
            while self._pass_partition(pkey, stats) == self.count:
                pass
        return stats

    def run(self, stop: threading.Event, interval_s: float = 0.25, on_added=None) -> None:
        """Pass until ``stop`` is set; ``on_added(stats)`` after a pass that brought alerts in."""
        while not stop.is_set():
            try:
                stats = self.run_once()
                if stats.added and on_added is not None:
                    on_added(stats)
            except Exception:  # noqa: BLE001 - Redis or the database away: try again
                log.exception("case builder pass failed; retrying")
                stop.wait(2.0)
            stop.wait(interval_s)
