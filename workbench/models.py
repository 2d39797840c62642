"""The workbench's records of record: SQLAlchemy 2.0 typed models.

Every table is created by an Alembic migration (``workbench/migrations``), never by
``create_all``. Times are timezone-aware UTC. The audit trail is append-only: the app has
no UPDATE or DELETE path for it, and the migration installs triggers that refuse both in
the database itself.

Tables:

=================  =========================================================================
``users``          reviewers and their role (viewer, reviewer, approver, admin)
``api_tokens``     per-user API tokens (only their sha256 is stored)
``web_sessions``   browser sessions (only the cookie's sha256 is stored) and their CSRF token
``cases``          one open case per account; its status, assignee and lock, latest figures
``alerts``         the alerts of record, brought in from Redis exactly once per event_id
``decisions``      dispositions of alerts and cases, approvals and rejections (append-only)
``notes``          reviewers' notes on a case
``ratings``        the running risk rating per account (and a reviewer's override)
``rating_history`` every change of an account's level, with why
``suppressions``   per-account suppression with a reason and an expiry
``audit``          the hash-chained audit trail (append-only)
``outbox``         messages to publish after their transaction commits (labels, webhooks)
``webhooks``       subscribers to case and disposition events (HMAC-signed)
``cursors``        where the case builder stands in each Redis alert stream
=================  =========================================================================
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Computed, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("viewer", "reviewer", "approver", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
DECISIONS = ("false_positive", "confirmed", "escalated")
CASE_STATUSES = ("open", "in_review", "pending_approval", "closed")
LEVELS = ("low", "medium", "high", "critical")


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored with its zone and read back as UTC (SQLite keeps none: its naive values are UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: D102
        if value is not None and value.tzinfo is None:
            raise ValueError("a naive datetime reached the database; use workbench.models.utcnow()")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):  # noqa: D102
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the workbench's tables."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """A person who works alerts, with one role."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def can(self, role: str) -> bool:
        """Whether this user's role is ``role`` or above (viewer < reviewer < approver < admin)."""
        return self.active and RANK[self.role] >= RANK[role]


class ApiToken(Base):
    """A per-user API token; the secret is shown once, only its sha256 is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    user: Mapped[User] = relationship(lazy="joined")


class WebSession(Base):
    """A browser session: the cookie's sha256, its CSRF token and when it was last used."""

    __tablename__ = "web_sessions"
    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    user: Mapped[User] = relationship(lazy="joined")


class Case(Base):
    """All open work on one account: its alerts, decisions and notes."""

    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(20), default="open")
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    lock_expires_at: Mapped[datetime | None]
    decision: Mapped[str | None] = mapped_column(String(20))        # the case's disposition
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    alert_count: Mapped[int] = mapped_column(Integer, default=0)
    open_alerts: Mapped[int] = mapped_column(Integer, default=0)     # alerts without a disposition
    max_score: Mapped[float] = mapped_column(Float, default=0.0)
    first_alert_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    last_alert_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    top_reason: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    risk_score: Mapped[float] = mapped_column(Float, default=0.0)   # the account's rating when last updated
    risk_level: Mapped[str] = mapped_column(String(10), default="low")
    # 1 while the case is not closed: the queue's default view walks (active, sort key, id) indexes in order.
    active: Mapped[int] = mapped_column(Integer, Computed("CASE WHEN status = 'closed' THEN 0 ELSE 1 END",
                                                          persisted=True))
    assignee: Mapped[User | None] = relationship(foreign_keys=[assignee_id], lazy="joined")

    __table_args__ = (
        Index("ix_cases_active_risk", "active", "risk_score", "id"),
        Index("ix_cases_active_score", "active", "max_score", "id"),
        Index("ix_cases_active_opened", "active", "opened_at", "id"),
        Index("ix_cases_active_recent", "active", "last_alert_ms", "id"),
        Index("ix_cases_status_opened", "status", "opened_at", "id"),
        Index("ix_cases_status_closed", "status", "closed_at"),
        Index("ix_cases_assignee_status", "assignee_id", "status"),
        Index("ix_cases_reason_status", "top_reason", "status"),
        Index("ix_cases_model_status", "model_version", "status"),
        Index("ux_cases_open_account", "account_id", unique=True, sqlite_where=text("status != 'closed'"),
              postgresql_where=text("status != 'closed'")),
    )

    @property
    def is_open(self) -> bool:
        """Anything but closed."""
        return self.status != "closed"


class AlertRecord(Base):
    """An alert of record: a copy of the worker's alert, kept as long as its case."""

    __tablename__ = "alerts"
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    ts: Mapped[int] = mapped_column(BigInteger)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    reasons: Mapped[list[Any]] = mapped_column(JSON)
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    features: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    partition_key: Mapped[str] = mapped_column(String(160))
    created_ms: Mapped[int] = mapped_column(BigInteger, index=True)   # when the worker committed it
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    decision: Mapped[str | None] = mapped_column(String(20))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    scenario: Mapped[str | None] = mapped_column(String(40))  # the simulator's ground truth, shown where present
    top_reason: Mapped[str | None] = mapped_column(String(64), index=True)


class Decision(Base):
    """One reviewer decision: an alert or case disposition, an approval or a rejection."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    event_id: Mapped[str | None] = mapped_column(String(128))   # None: a decision on the whole case
    kind: Mapped[str] = mapped_column(String(16))               # disposition, approval, rejection
    decision: Mapped[str | None] = mapped_column(String(20))
    note: Mapped[str] = mapped_column(Text)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    user: Mapped[User] = relationship(lazy="joined")


class Note(Base):
    """A reviewer's note on a case."""

    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user: Mapped[User] = relationship(lazy="joined")


class Rating(Base):
    """An account's running risk rating, and a reviewer's override of its level."""

    __tablename__ = "ratings"
    account_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    score: Mapped[float] = mapped_column(Float, default=0.0)
    level: Mapped[str] = mapped_column(String(10), default="low")
    level_since_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    confirmed: Mapped[int] = mapped_column(Integer, default=0)
    override_level: Mapped[str | None] = mapped_column(String(10))
    override_reason: Mapped[str | None] = mapped_column(Text)
    override_until: Mapped[datetime | None]
    override_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class RatingChange(Base):
    """A change of an account's risk level, with why."""

    __tablename__ = "rating_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    score: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(10))
    why: Mapped[str] = mapped_column(Text)


class Suppression(Base):
    """Alerts of an account kept out of the queue until ``until``, for a stated reason."""

    __tablename__ = "suppressions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[str] = mapped_column(String(128), index=True)
    reason: Mapped[str] = mapped_column(Text)
    until: Mapped[datetime]
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditRow(Base):
    """One action in the audit trail; ``hash`` chains it to the row before."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    object_type: Mapped[str] = mapped_column(String(20))
    object_id: Mapped[str] = mapped_column(String(128), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    address: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class OutboxMessage(Base):
    """A message to deliver after its transaction committed: a label to Kafka, a webhook call."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sink: Mapped[str] = mapped_column(String(16))       # kafka | webhook
    target: Mapped[str] = mapped_column(String(512))    # topic, or the webhook id
    key: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbox_pending", "delivered_at", "next_attempt_at"),)


class Webhook(Base):
    """A subscriber to case and disposition events; calls are signed with its secret."""

    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    secret: Mapped[str] = mapped_column(String(128))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cursor(Base):
    """The case builder's position in one Redis alert stream."""

    __tablename__ = "cursors"
    stream: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_id: Mapped[str] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
