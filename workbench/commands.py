"""The workbench's commands: ``txwatch ui``, ``users``, ``audit verify``, ``labels export``,
``webhooks`` and ``db upgrade``. Settings come from the ``TXWATCH_*`` environment."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Callable

from stream.errors import TxwatchError


def _settings():
    from stream.settings import load_settings

    return load_settings()


def _db(settings=None):
    from workbench.db import Database

    return Database.from_settings(settings or _settings())


def _cli_actor() -> str:
    """Who acts from the command line, as the audit trail names them."""
    return f"cli:{os.environ.get('USER') or 'cli'}"


def _kafka_sender(settings) -> tuple[Callable[[str, bytes, bytes], None] | None, Callable[[], None]]:
    """A Kafka send function for the outbox publisher, and its close; (None, noop) without Kafka."""
    if not settings.kafka_url:
        return None, lambda: None
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all",
                             **settings.kafka_client_options())

    def send(topic: str, key: bytes, value: bytes) -> None:
        producer.send(topic, key=key, value=value).get(timeout=10)

    return send, lambda: producer.close(timeout=5)


# -- txwatch ui -------------------------------------------------------------------------

def cmd_ui(a: argparse.Namespace) -> int:
    import uvicorn

    from stream.adapters.kafka import ensure_topics
    from workbench.web.app import create_app

    settings = _settings()
    if a.port is not None:
        settings = settings.model_copy(update={"ui_port": a.port})
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("txwatch").setLevel(logging.INFO)
    db = _db(settings)
    send, close = _kafka_sender(settings)
    if settings.kafka_url:
        ensure_topics(settings.model_copy(update={"input_topics": settings.reviews_topic}))
    app = create_app(settings, db=db, kafka_send=send)
    if not settings.redis_url:
        print("txwatch ui: TXWATCH_REDIS_URL is not set: no live alerts and no case builder", file=sys.stderr)
    print(f"txwatch ui on http://{settings.ui_host}:{settings.ui_port}/ (database "
          f"{settings.redacted_database_url()})", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=settings.ui_host, port=settings.ui_port, log_level="warning",
                            timeout_graceful_shutdown=3, proxy_headers=True)
    try:
        uvicorn.Server(config).run()
    finally:
        close()
        db.dispose()
    return 0


# -- txwatch users ----------------------------------------------------------------------

def _password(a: argparse.Namespace) -> str:
    if a.password_env:
        value = os.environ.get(a.password_env)
        if not value:
            raise TxwatchError(f"${a.password_env} is not set")
        return value
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise TxwatchError("no password on standard input")
        return line
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise TxwatchError("the two passwords differ")
    return first


def cmd_users(a: argparse.Namespace) -> int:
    from workbench import audit, auth
    from workbench.models import ROLES, User

    db = _db()
    actor = _cli_actor()
    with db.transaction() as s:
        if a.action == "add":
            user = auth.create_user(s, a.name, _password(a), a.role)
            audit.record(s, actor, "user_add", "user", user.username, after={"role": user.role})
            print(f"user {user.username} ({user.role}) added")
        elif a.action == "list":
            for u in s.query(User).order_by(User.username):
                print(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}")
        else:
            user = auth.find_user(s, a.name)
            if user is None:
                raise TxwatchError(f"no user {a.name!r}")
            before = {"role": user.role, "active": user.active}
            if a.action == "role":
                if a.role not in ROLES:
                    raise TxwatchError(f"role must be one of {', '.join(ROLES)}")
                user.role = a.role
            elif a.action == "disable":
                user.active = False
            elif a.action == "enable":
                user.active = True
            elif a.action == "passwd":
                user.password_hash = auth.hash_password(_password(a))
            elif a.action == "token":
                secret = auth.issue_token(s, user, a.token_name)
                audit.record(s, actor, "token_issue", "user", user.username, after={"name": a.token_name})
                print(secret)
                return 0
            audit.record(s, actor, f"user_{a.action}", "user", user.username, before=before,
                         after={"role": user.role, "active": user.active})
            print(f"user {user.username}: {a.action} done")
    return 0


# -- txwatch audit verify ------------------------------------------------------------------

def cmd_audit(a: argparse.Namespace) -> int:
    from workbench import audit

    db = _db()
    with db.sessions() as s:
        verdict = audit.verify(s)
    if verdict.ok:
        print(f"audit trail intact: {verdict.rows:,} rows, every hash and link matches; head {verdict.head}")
        return 0
    print(f"txwatch: error: audit trail broken at row {verdict.first_bad_id}: {verdict.problem}", file=sys.stderr)
    return 1


# -- txwatch labels export ------------------------------------------------------------------

def _labels_from_db(settings) -> list[dict]:
    from workbench.health import labels_of_record

    db = _db(settings)
    with db.sessions() as s:
        return labels_of_record(s, settings.reviews_topic)


def _labels_from_kafka(settings, idle_s: float = 2.0) -> list[dict]:
    """Every record of the reviews topic, read with assigned partitions from the beginning.

    The end is where the topic stays idle for ``idle_s`` after the reported end offsets (the
    embedded broker reports them low: docs/limitations.md)."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    from stream.events.labels import LabelError, decode

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             **settings.kafka_client_options())
    try:
        parts = consumer.partitions_for_topic(settings.reviews_topic)
        if not parts:
            return []
        tps = [TopicPartition(settings.reviews_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out, bad = [], 0
        last = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    try:
                        out.append(decode(r.value))
                    except LabelError:
                        bad += 1
                last = time.monotonic()
            caught_up = all(consumer.position(tp) >= ends[tp] for tp in tps)
            if caught_up and time.monotonic() - last > idle_s:
                break
        if bad:
            print(f"txwatch: {bad} records of {settings.reviews_topic} are not label records; skipped",
                  file=sys.stderr)
        return out
    finally:
        consumer.close()


def cmd_labels(a: argparse.Namespace) -> int:
    from stream.events.labels import write_labels

    settings = _settings()
    source = a.source or ("kafka" if settings.kafka_url else "db")
    if source == "kafka" and not settings.kafka_url:
        raise TxwatchError("--source kafka needs TXWATCH_KAFKA_URL")
    records = _labels_from_kafka(settings) if source == "kafka" else _labels_from_db(settings)
    n = write_labels(a.out, records)
    print(f"wrote {n:,} label records from {settings.reviews_topic if source == 'kafka' else 'the workbench database'}"
          f" to {a.out}", file=sys.stderr)
    return 0


# -- txwatch webhooks ---------------------------------------------------------------------

def cmd_webhooks(a: argparse.Namespace) -> int:
    import secrets
    from urllib.parse import urlsplit

    from workbench import audit
    from workbench.models import Webhook

    db = _db()
    with db.transaction() as s:
        if a.action == "add":
            if urlsplit(a.url).scheme not in ("http", "https") or not urlsplit(a.url).netloc:
                raise TxwatchError(f"not an http(s) URL: {a.url!r}")
            hook = Webhook(url=a.url, secret=a.secret or secrets.token_hex(24), active=True)
            s.add(hook)
            s.flush()
            audit.record(s, _cli_actor(), "webhook_add", "webhook", hook.id,
                         after={"url": a.url})
            print(f"webhook {hook.id} -> {hook.url}; secret {hook.secret}")
        elif a.action == "list":
            for h in s.query(Webhook).order_by(Webhook.id):
                print(f"{h.id}\t{h.url}\t{'active' if h.active else 'removed'}")
        else:
            hook = s.get(Webhook, a.id)
            if hook is None:
                raise TxwatchError(f"no webhook {a.id}")
            hook.active = False
            audit.record(s, _cli_actor(), "webhook_remove", "webhook", hook.id)
            print(f"webhook {hook.id} removed")
    return 0


def cmd_db(a: argparse.Namespace) -> int:
    from workbench.db import Database, make_engine, migrate

    settings = _settings()
    pw = settings.database_password.get_secret_value() if settings.database_password else None
    db = Database(make_engine(settings.database_url, pw))
    print(f"workbench database at revision {migrate(db.engine)} ({settings.redacted_database_url()})")
    return 0


# -- parsers ----------------------------------------------------------------------------------

def add_parsers(sub) -> None:
    """Register the workbench's subcommands on the ``txwatch`` parser."""
    ui = sub.add_parser("ui", help="the reviewers' workbench web app (TXWATCH_DATABASE_URL, TXWATCH_REDIS_URL, ...)")
    ui.add_argument("--port", type=int, help="port (default TXWATCH_UI_PORT)")
    ui.set_defaults(func=cmd_ui)

    us = sub.add_parser("users", help="workbench users and roles: add, list, role, disable, enable, passwd, token")
    us_sub = us.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext in (("add", "a new user (password from a prompt, stdin or --password-env)"),
                           ("role", "change a user's role"), ("disable", "stop a user signing in"),
                           ("enable", "let a disabled user sign in again"), ("passwd", "set a new password"),
                           ("token", "issue an API token (printed once)")):
        p = us_sub.add_parser(name, help=helptext)
        p.add_argument("name", help="user name")
        if name in ("add", "role"):
            p.add_argument("--role", required=True, choices=("viewer", "reviewer", "approver", "admin"))
        if name in ("add", "passwd"):
            p.add_argument("--password-env", help="read the password from this environment variable")
        if name == "token":
            p.add_argument("--token-name", default="api", help="a label for the token (default api)")
    us_sub.add_parser("list", help="every user, role and state")
    us.set_defaults(func=cmd_users)

    au = sub.add_parser("audit", help="the workbench's audit trail")
    au_sub = au.add_subparsers(dest="action", required=True, metavar="ACTION")
    au_sub.add_parser("verify", help="check every row's hash and link; exit 1 at the first broken row")
    au.set_defaults(func=cmd_audit)

    lb = sub.add_parser("labels", help="reviewers' labels")
    lb_sub = lb.add_subparsers(dest="action", required=True, metavar="ACTION")
    ex = lb_sub.add_parser("export", help="write the reviewers' labels as JSON Lines (for train/distill --labels)")
    ex.add_argument("--out", required=True, help="labels file (.jsonl)")
    ex.add_argument("--source", choices=("kafka", "db"),
                    help="the reviews topic (default with TXWATCH_KAFKA_URL) or the workbench database")
    lb.set_defaults(func=cmd_labels)

    wh = sub.add_parser("webhooks", help="HMAC-signed calls on case and disposition events")
    wh_sub = wh.add_subparsers(dest="action", required=True, metavar="ACTION")
    wa = wh_sub.add_parser("add", help="a new webhook")
    wa.add_argument("url")
    wa.add_argument("--secret", help="signing secret (default: a random one, printed)")
    wh_sub.add_parser("list", help="every webhook")
    wr = wh_sub.add_parser("remove", help="stop calling a webhook")
    wr.add_argument("id", type=int)
    wh.set_defaults(func=cmd_webhooks)

    dbp = sub.add_parser("db", help="the workbench database")
    db_sub = dbp.add_subparsers(dest="action", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="migrate to the newest schema (txwatch ui does this at start)")
    dbp.set_defaults(func=cmd_db)
