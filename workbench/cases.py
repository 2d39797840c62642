"""Reviewers' work on cases: claim, release, assign, dispose, approve, notes, suppressions, overrides.

Every function here runs inside the caller's transaction and writes, in that one
transaction, the change, its audit row and the messages to publish after it (the label
on the reviews topic, webhook calls: :mod:`workbench.outbox`). A refusal raises a
:class:`WorkError` subclass; the caller's transaction is rolled back, and the web layer
maps it to an HTTP status and records the refusal in the audit trail (a transaction of its
own).

Case life: ``open`` -> (claim) ``in_review`` -> dispose the case: ``false_positive``
closes it; ``confirmed`` closes it, or with four-eyes on (``TXWATCH_FOUR_EYES``) goes to
``pending_approval`` until an approver other than its reviewer approves (closed) or
rejects (back to ``in_review``); ``escalated`` always goes to ``pending_approval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from stream.errors import TxwatchError
from stream.events.labels import encode, label_record
from workbench import audit, outbox, ratings
from workbench.db import take_write_lock
from workbench.models import (
    DECISIONS, LEVELS, AlertRecord, Case, Decision, Note, Rating, Suppression, User, utcnow
)

MAX_NOTE = 10_000


class WorkError(TxwatchError):
    """A reviewer action that cannot be done; the message says why."""

    status = 400


class NotFound(WorkError):
    """An unknown case, alert or user."""

    status = 404


class Conflict(WorkError):
    """The case is not in a state that allows the action (locked by another, closed, stale lock)."""

    status = 409


class Forbidden(WorkError):
    """The action is not this user's to take (role, four-eyes)."""

    status = 403


@dataclass(frozen=True)
class Policy:
    """The workbench's rules, from the settings."""

    lock_ttl_s: float = 1800.0
    four_eyes: bool = True
    reviews_topic: str = "exchange.reviews"


@dataclass(frozen=True)
class Actor:
    """Who acts, and from where (for the audit trail)."""

    user: User
    address: str | None = None


def _case(session: Session, case_id: int, *, lock: bool = True) -> Case:
    if lock and session.get_bind().dialect.name == "postgresql":
        # The row alone is locked, then read: a row locked together with its joined assignee
        # comes back, after waiting for another claim, with the assignee of before the wait.
        session.execute(select(Case.id).where(Case.id == case_id).with_for_update())
    elif lock:
        take_write_lock(session)  # two claims must not both see the case free
    q = select(Case).where(Case.id == case_id).execution_options(populate_existing=True)
    case = session.execute(q).unique().scalar()
    if case is None:
        raise NotFound(f"no case {case_id}")
    return case


def case_brief(case: Case) -> dict[str, Any]:
    """The fields of a case that the audit trail records before and after an action."""
    return {"status": case.status, "assignee": case.assignee.username if case.assignee else None,
            "decision": case.decision, "lock_expires_at": case.lock_expires_at.isoformat() if case.lock_expires_at else None}


def _note(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise WorkError("a note is required")
    if len(text) > MAX_NOTE:
        raise WorkError(f"a note is at most {MAX_NOTE:,} characters")
    return text


def _locked_by_other(case: Case, user: User, now: datetime) -> bool:
    return (case.assignee_id is not None and case.assignee_id != user.id and case.lock_expires_at is not None
            and case.lock_expires_at > now)


def _require_lock(case: Case, actor: Actor, now: datetime) -> None:
    if case.status == "closed":
        raise Conflict(f"case {case.id} is closed")
    if case.status == "pending_approval":
        raise Conflict(f"case {case.id} is waiting for approval")
    if case.assignee_id != actor.user.id:
        raise Conflict(f"claim case {case.id} first" + (f" (it is with {case.assignee.username})" if case.assignee else ""))
    if case.lock_expires_at is None or case.lock_expires_at <= now:
        raise Conflict(f"your lock on case {case.id} expired; claim it again")


def _touch(case: Case, now: datetime) -> None:
    case.updated_at = now


def _audit(session: Session, actor: Actor, action: str, case: Case, before: dict | None, **extra) -> None:
    after = {**case_brief(case), **extra}
    audit.record(session, actor.user.username, action, "case", case.id, before=before, after=after,
                 address=actor.address)


# -- locks -----------------------------------------------------------------------------

def claim(session: Session, case_id: int, actor: Actor, policy: Policy) -> Case:
    """Take the case: it is locked to ``actor`` for ``lock_ttl_s`` (renewed by every action)."""
    now = utcnow()
    case = _case(session, case_id)
    if case.status in ("closed", "pending_approval"):
        raise Conflict(f"case {case.id} is {case.status.replace('_', ' ')}")
    if _locked_by_other(case, actor.user, now):
        raise Conflict(f"case {case.id} is claimed by {case.assignee.username} until "
                       f"{case.lock_expires_at:%Y-%m-%d %H:%M} UTC")
    before = case_brief(case)
    case.assignee_id, case.assignee = actor.user.id, actor.user
    case.lock_expires_at = now + timedelta(seconds=policy.lock_ttl_s)
    case.status = "in_review"
    _touch(case, now)
    _audit(session, actor, "claim", case, before)
    return case


def release(session: Session, case_id: int, actor: Actor) -> Case:
    """Give the case back to the queue (its assignee, or an approver or admin)."""
    now = utcnow()
    case = _case(session, case_id)
    if case.assignee_id is None:
        raise Conflict(f"case {case.id} is not claimed")
    if case.assignee_id != actor.user.id and not actor.user.can("approver"):
        raise Forbidden(f"case {case.id} is {case.assignee.username}'s; only they or an approver can release it")
    before = case_brief(case)
    case.assignee_id, case.assignee, case.lock_expires_at = None, None, None
    if case.status == "in_review":
        case.status = "open"
    _touch(case, now)
    _audit(session, actor, "release", case, before)
    return case


def assign(session: Session, case_id: int, username: str, actor: Actor, policy: Policy) -> Case:
    """An approver or admin gives the case to a reviewer (locked to them)."""
    now = utcnow()
    case = _case(session, case_id)
    if case.status in ("closed", "pending_approval"):
        raise Conflict(f"case {case.id} is {case.status.replace('_', ' ')}")
    user = session.execute(select(User).where(User.username == username)).scalar()
    if user is None or not user.active:
        raise NotFound(f"no active user {username!r}")
    if not user.can("reviewer"):
        raise WorkError(f"{username} is a {user.role}; cases go to reviewers, approvers or admins")
    before = case_brief(case)
    case.assignee_id, case.assignee = user.id, user
    case.lock_expires_at = now + timedelta(seconds=policy.lock_ttl_s)
    case.status = "in_review"
    _touch(case, now)
    _audit(session, actor, "assign", case, before)
    return case


# -- decisions ----------------------------------------------------------------------------

def _take_effect(session: Session, case: Case, alert: AlertRecord, reviewer: str, note: str, policy: Policy,
                 now: datetime) -> None:
    """A final alert disposition's consequences: its label on the reviews topic (through the
    outbox) and its signal to the account's rating."""
    record = label_record(alert.event_id, alert.decision, account_id=alert.account_id, reviewer=reviewer,
                          decided_at=int(now.timestamp() * 1000), case_id=case.id, note=note)
    outbox.enqueue_kafka(session, policy.reviews_topic, alert.event_id, encode(record).decode())
    if alert.decision in ("confirmed", "false_positive"):
        ratings.apply_signal(session, alert.account_id, alert.decision, None,
                             why=f"reviewer: {alert.decision.replace('_', ' ')}")


def _mark(case: Case, alert: AlertRecord, decision: str, actor: Actor, now: datetime) -> None:
    """Set an alert's disposition."""
    if alert.decision is None:
        case.open_alerts = max(0, case.open_alerts - 1)
    alert.decision, alert.decided_by, alert.decided_at = decision, actor.user.id, now


def _case_decided(session: Session, case: Case) -> tuple[Decision | None, list[AlertRecord]]:
    """The case's latest case-level disposition and the alerts that took it (not one of their own)."""
    last = session.execute(select(Decision).where(Decision.case_id == case.id, Decision.kind == "disposition",
                                                  Decision.event_id.is_(None))
                           .order_by(Decision.id.desc()).limit(1)).scalar()
    if last is None:
        return None, []
    alerts = session.execute(select(AlertRecord).where(AlertRecord.case_id == case.id,
                                                       AlertRecord.decided_at == last.at)).scalars().all()
    return last, list(alerts)


def _disposing(session: Session, case_id: int, decision: str, note: str | None,
               actor: Actor) -> tuple[str, datetime, Case]:
    """A disposition's checks: a known decision, a note, and the case's lock held by ``actor``:
    ``(note, now, case)``."""
    if decision not in DECISIONS:
        raise WorkError(f"a disposition is one of {', '.join(DECISIONS)}, not {decision!r}")
    text = _note(note)
    now = utcnow()
    case = _case(session, case_id)
    _require_lock(case, actor, now)
    return text, now, case


def dispose_alert(session: Session, case_id: int, event_id: str, decision: str, note: str | None, actor: Actor,
                  policy: Policy) -> AlertRecord:
    """Record a disposition of one alert of the case (the reviewer must hold the case's lock)."""
    text, now, case = _disposing(session, case_id, decision, note, actor)
    alert = session.get(AlertRecord, event_id)
    if alert is None or alert.case_id != case.id:
        raise NotFound(f"case {case.id} has no alert {event_id!r}")
    before = {"decision": alert.decision}
    _mark(case, alert, decision, actor, now)
    session.add(Decision(case_id=case.id, event_id=alert.event_id, kind="disposition", decision=decision,
                         note=text, user_id=actor.user.id, at=now))
    _take_effect(session, case, alert, actor.user.username, text, policy, now)
    case.lock_expires_at = now + timedelta(seconds=policy.lock_ttl_s)
    _touch(case, now)
    audit.record(session, actor.user.username, "dispose_alert", "alert", event_id, before=before,
                 after={"decision": decision, "case_id": case.id, "note": text}, address=actor.address)
    outbox.enqueue_webhooks(session, "alert.disposed", {"case_id": case.id, "event_id": event_id,
                                                        "decision": decision, "reviewer": actor.user.username})
    return alert


def dispose_case(session: Session, case_id: int, decision: str, note: str | None, actor: Actor,
                 policy: Policy) -> Case:
    """Dispose the whole case; alerts without a disposition of their own take this one.

    A disposition that waits for approval takes effect (labels, rating) when it is approved;
    until then the alerts show it, and a rejection takes it back.
    """
    text, now, case = _disposing(session, case_id, decision, note, actor)
    before = case_brief(case)
    undecided = session.execute(select(AlertRecord).where(AlertRecord.case_id == case.id,
                                                          AlertRecord.decision.is_(None))).scalars().all()
    needs_approval = decision == "escalated" or (decision == "confirmed" and policy.four_eyes)
    for alert in undecided:
        _mark(case, alert, decision, actor, now)
        if not needs_approval:
            _take_effect(session, case, alert, actor.user.username, text, policy, now)
    session.add(Decision(case_id=case.id, event_id=None, kind="disposition", decision=decision, note=text,
                         user_id=actor.user.id, at=now))
    case.decision, case.decided_by = decision, actor.user.id
    if needs_approval:
        case.status = "pending_approval"
    else:
        _close(case, now)
    _touch(case, now)
    _audit(session, actor, "dispose_case", case, before, note=text, alerts_disposed=len(undecided))
    outbox.enqueue_webhooks(session, "case.disposed", {"case_id": case.id, "account_id": case.account_id,
                                                       "decision": decision, "status": case.status,
                                                       "reviewer": actor.user.username})
    return case


def _close(case: Case, now: datetime) -> None:
    case.status, case.closed_at = "closed", now
    case.lock_expires_at = None


def _second_person(session: Session, case_id: int, note: str | None,
                   actor: Actor) -> tuple[str, datetime, Case, dict[str, Any]]:
    """A case waiting for approval, taken up by someone other than its reviewer (four-eyes):
    ``(note, now, case, its brief before)``."""
    text = _note(note)
    case = _case(session, case_id)
    if case.status != "pending_approval":
        raise Conflict(f"case {case.id} is not waiting for approval (it is {case.status.replace('_', ' ')})")
    if case.decided_by == actor.user.id:
        raise Forbidden("four-eyes: a case is approved or sent back by someone other than the reviewer who decided it")
    return text, utcnow(), case, case_brief(case)


def approve(session: Session, case_id: int, note: str | None, actor: Actor, policy: Policy) -> Case:
    """An approver other than the case's reviewer closes a case waiting for approval."""
    text, now, case, before = _second_person(session, case_id, note, actor)
    decided, alerts = _case_decided(session, case)
    for alert in alerts:  # the decision takes effect now: labels and rating
        _take_effect(session, case, alert, decided.user.username, decided.note, policy, now)
    case.approved_by = actor.user.id
    _close(case, now)
    session.add(Decision(case_id=case.id, kind="approval", decision=case.decision, note=text, user_id=actor.user.id, at=now))
    _touch(case, now)
    _audit(session, actor, "approve", case, before, note=text)
    outbox.enqueue_webhooks(session, "case.approved", {"case_id": case.id, "account_id": case.account_id,
                                                       "decision": case.decision, "approver": actor.user.username})
    return case


def reject(session: Session, case_id: int, note: str | None, actor: Actor, policy: Policy) -> Case:
    """An approver sends a case waiting for approval back to its reviewer, with a note."""
    text, now, case, before = _second_person(session, case_id, note, actor)
    # The alerts that took the rejected case disposition (not one of their own) are undecided
    # again (it never took effect: no label, no rating), so the next disposition decides them.
    _, sent_back = _case_decided(session, case)
    for alert in sent_back:
        alert.decision, alert.decided_by, alert.decided_at = None, None, None
    reopened = len(sent_back)
    case.open_alerts += reopened
    case.status, case.decision = "in_review", None
    case.lock_expires_at = now + timedelta(seconds=policy.lock_ttl_s)
    session.add(Decision(case_id=case.id, kind="rejection", decision=None, note=text, user_id=actor.user.id, at=now))
    _touch(case, now)
    _audit(session, actor, "reject", case, before, note=text, alerts_reopened=reopened)
    return case


def add_note(session: Session, case_id: int, body: str | None, actor: Actor) -> Note:
    """A note on the case (any reviewer; the case need not be claimed)."""
    text = _note(body)
    case = _case(session, case_id)
    note = Note(case_id=case.id, user_id=actor.user.id, body=text)
    session.add(note)
    _touch(case, utcnow())
    session.flush()
    audit.record(session, actor.user.username, "note", "case", case.id, after={"note_id": note.id, "body": text},
                 address=actor.address)
    return note


def viewed(session: Session, case_id: int, actor: Actor) -> None:
    """Record that ``actor`` opened the case."""
    audit.record(session, actor.user.username, "view", "case", case_id, address=actor.address)


# -- accounts ----------------------------------------------------------------------------

def suppress(session: Session, account_id: str, reason: str | None, until: datetime, actor: Actor) -> Suppression:
    """Keep the account's cases out of the queue until ``until``, for a stated reason."""
    text = _note(reason)
    if until <= utcnow():
        raise WorkError("a suppression's expiry must be in the future")
    row = Suppression(account_id=account_id, reason=text, until=until, created_by=actor.user.id)
    session.add(row)
    session.flush()
    audit.record(session, actor.user.username, "suppress", "account", account_id,
                 after={"until": until.isoformat(), "reason": text}, address=actor.address)
    return row


def active_suppression(session: Session, account_id: str) -> Suppression | None:
    """The account's live suppression with the latest expiry, if any."""
    return session.execute(select(Suppression).where(Suppression.account_id == account_id,
                                                     Suppression.until > utcnow())
                           .order_by(Suppression.until.desc()).limit(1)).scalar()


def override_rating(session: Session, account_id: str, level: str, reason: str | None, until: datetime,
                    actor: Actor) -> Rating:
    """A reviewer sets the account's risk level until ``until``, with a reason."""
    if level not in LEVELS:
        raise WorkError(f"a level is one of {', '.join(LEVELS)}, not {level!r}")
    text = _note(reason)
    if until <= utcnow():
        raise WorkError("an override's expiry must be in the future")
    row = session.get(Rating, account_id) or Rating(account_id=account_id, score=0.0, level="low",
                                                    level_since_ms=0, updated_ms=0, confirmed=0)
    session.add(row)
    before = {"override_level": row.override_level, "until": row.override_until.isoformat() if row.override_until else None}
    row.override_level, row.override_reason, row.override_until, row.override_by = level, text, until, actor.user.id
    session.flush()
    audit.record(session, actor.user.username, "override_rating", "account", account_id, before=before,
                 after={"override_level": level, "until": until.isoformat(), "reason": text}, address=actor.address)
    ratings.sync_cases(session, row)
    return row
