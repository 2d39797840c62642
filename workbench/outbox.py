"""Messages published after their transaction commits: labels to Kafka, webhook calls.

A reviewer's action writes its outbox rows in the same transaction as the action and its
audit row, so a label or a webhook is sent if and only if the decision was stored. The
:class:`Publisher` delivers pending rows, marks them delivered, and retries failures with
exponential backoff (``RETRY_BASE_S`` doubling up to ``RETRY_MAX_S``); delivery is at least
once (a consumer keys on the event id or the delivery id).

A webhook call is a JSON POST with the headers ``X-Txwatch-Event`` (e.g. ``case.disposed``),
``X-Txwatch-Delivery`` (the outbox id) and ``X-Txwatch-Signature: sha256=<hex>``, the
HMAC-SHA256 of the raw body with the webhook's secret.

>>> sign("s3cret", b'{"a":1}')
'sha256=5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d'
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any, Callable

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from workbench.models import OutboxMessage, Webhook, utcnow

log = logging.getLogger("txwatch.workbench.outbox")
RETRY_BASE_S = 2.0
RETRY_MAX_S = 600.0


def sign(secret: str, body: bytes) -> str:
    """The ``X-Txwatch-Signature`` header value of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueue_kafka(session: Session, topic: str, key: str, payload: str) -> None:
    """A Kafka message to publish once the transaction commits."""
    session.add(OutboxMessage(sink="kafka", target=topic, key=key, payload=payload))


def enqueue_webhooks(session: Session, event: str, body: dict[str, Any]) -> None:
    """One call per active webhook, to make once the transaction commits."""
    hooks = session.execute(select(Webhook.id).where(Webhook.active.is_(True))).scalars().all()
    if not hooks:
        return
    payload = orjson.dumps({"event": event, "at": utcnow().isoformat(), **body}).decode()
    for hook_id in hooks:
        session.add(OutboxMessage(sink="webhook", target=str(hook_id), key=event, payload=payload))


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures.

    >>> [backoff(n) for n in (1, 2, 3)], backoff(30)
    ([2.0, 4.0, 8.0], 600.0)
    """
    return min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempts - 1))


class Publisher:
    """Delivers pending outbox rows: Kafka through ``send_kafka(topic, key, value)``, webhooks by HTTP POST."""

    def __init__(self, db, send_kafka: Callable[[str, bytes, bytes], None] | None, *, webhook_timeout_s: float = 5.0,
                 batch: int = 200) -> None:
        self.db = db
        self.send_kafka = send_kafka
        self.timeout = webhook_timeout_s
        self.batch = batch

    def _post(self, hook: Webhook, row: OutboxMessage) -> None:
        body = row.payload.encode()
        req = urllib.request.Request(hook.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-Txwatch-Event": row.key or "", "X-Txwatch-Delivery": str(row.id),
            "X-Txwatch-Signature": sign(hook.secret, body), "User-Agent": "txwatch-webhook/1"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - the admin's configured URL
            if not 200 <= resp.status < 300:
                raise urllib.error.HTTPError(hook.url, resp.status, "not 2xx", resp.headers, None)

    def deliver(self, row: OutboxMessage, session: Session) -> None:
        """Deliver one row (raises on failure)."""
        if row.sink == "kafka":
            if self.send_kafka is None:
                raise RuntimeError("no Kafka configured (TXWATCH_KAFKA_URL)")
            self.send_kafka(row.target, (row.key or "").encode(), row.payload.encode())
        else:
            hook = session.get(Webhook, int(row.target))
            if hook is None or not hook.active:
                return  # removed since: nothing to deliver
            self._post(hook, row)

    def run_once(self) -> tuple[int, int]:
        """Deliver what is due; (delivered, failed)."""
        now = utcnow()
        done = failed = 0
        with self.db.transaction() as session:
            rows = session.execute(select(OutboxMessage).where(OutboxMessage.delivered_at.is_(None),
                                                               OutboxMessage.next_attempt_at <= now)
                                   .order_by(OutboxMessage.id).limit(self.batch)).scalars().all()
            for row in rows:
                if row.sink == "kafka" and self.send_kafka is None:
                    continue  # kept until a Kafka is configured
                try:
                    self.deliver(row, session)
                except Exception as exc:  # noqa: BLE001 - any failure is retried later
                    row.attempts += 1
                    row.last_error = f"{exc.__class__.__name__}: {exc}"[:500]
                    row.next_attempt_at = utcnow() + timedelta(seconds=backoff(row.attempts))
                    failed += 1
                    log.warning("outbox %s to %s failed (attempt %d): %s", row.sink, row.target, row.attempts,
                                row.last_error)
                else:
                    row.delivered_at = utcnow()
                    done += 1
        return done, failed

    def run(self, stop: threading.Event, interval_s: float = 0.5) -> None:
        """Deliver until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup: try again next round
                log.exception("outbox delivery round failed")
            stop.wait(interval_s)
