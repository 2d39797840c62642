"""The outbox publisher: signed webhook calls to a real local HTTP server, retries with
backoff, removed webhooks, and label messages to a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from stream.events.labels import decode, encode, label_record
from workbench import outbox
from workbench.db import Database
from workbench.models import OutboxMessage, Webhook, utcnow
from txwatch.local.embedded import EmbeddedKafka, free_port

SECRET = "s3cret-of-the-hook"
# kafka-python loads its protocol schemas with importlib.resources' deprecated helpers
pytestmark = [pytest.mark.filterwarnings("ignore:read_text is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")]


class HookServer:
    """A webhook receiver on 127.0.0.1: records every call, answers the statuses it is given
    (then 200), and checks the signature with the secret it knows."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.calls: list[dict] = []
        self.statuses: list[int] = []
        self.secrets = secrets or {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                secret = server.secrets.get(self.path, SECRET)
                want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                got = self.headers.get("X-Txwatch-Signature", "")
                server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                     "signature_ok": hmac.compare_digest(want, got)})
                status = server.statuses.pop(0) if server.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "HookServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def hooks():
    with HookServer() as h:
        yield h


class Clock:
    """A settable ``utcnow`` for the outbox (its retry times), starting at the real now."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(outbox, "utcnow", c)
    return c


def _add_hook(db: Database, url: str, secret: str = SECRET, active: bool = True) -> int:
    with db.transaction() as s:
        hook = Webhook(url=url, secret=secret, active=active)
        s.add(hook)
        s.flush()
        return hook.id


def _rows(db: Database) -> list[OutboxMessage]:
    with db.sessions() as s:
        return s.execute(select(OutboxMessage).order_by(OutboxMessage.id)).scalars().all()


# -- webhooks ---------------------------------------------------------------------------------

def test_a_webhook_call_is_a_signed_json_post(db, hooks):
    hook_id = _add_hook(db, hooks.url())
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "case.disposed", {"case_id": 7, "decision": "confirmed"})
    [row] = _rows(db)
    assert (row.sink, row.target, row.key, row.delivered_at) == ("webhook", str(hook_id), "case.disposed", None)

    assert outbox.Publisher(db, None).run_once() == (1, 0)
    [call] = hooks.calls
    body = call["body"]
    sent = json.loads(body)
    assert sent["event"] == "case.disposed" and sent["case_id"] == 7 and sent["decision"] == "confirmed"
    assert "at" in sent
    headers = {k.lower(): v for k, v in call["headers"].items()}
    assert headers["x-txwatch-event"] == "case.disposed"
    assert headers["x-txwatch-delivery"] == str(row.id)
    assert headers["x-txwatch-signature"] == outbox.sign(SECRET, body)
    assert call["signature_ok"]
    assert headers["content-type"] == "application/json"
    assert body == row.payload.encode()

    [row] = _rows(db)
    assert row.delivered_at is not None and row.attempts == 0 and row.last_error is None
    # delivered once: another round sends nothing
    assert outbox.Publisher(db, None).run_once() == (0, 0)
    assert len(hooks.calls) == 1


def test_each_active_webhook_gets_its_own_signed_call(db):
    secrets = {"/a": "secret-a", "/b": "secret-b"}
    with HookServer(secrets) as server:
        a = _add_hook(db, server.url("/a"), "secret-a")
        b = _add_hook(db, server.url("/b"), "secret-b")
        _add_hook(db, server.url("/gone"), "secret-c", active=False)
        with db.transaction() as s:
            outbox.enqueue_webhooks(s, "alert.disposed", {"event_id": "ev-1"})
        assert sorted(r.target for r in _rows(db)) == sorted([str(a), str(b)])
        assert outbox.Publisher(db, None).run_once() == (2, 0)
        assert sorted(c["path"] for c in server.calls) == ["/a", "/b"]
        assert all(c["signature_ok"] for c in server.calls)
        sigs = {c["headers"]["X-Txwatch-Signature"] for c in server.calls}
        assert len(sigs) == 2  # same body, different secrets


def test_no_webhooks_no_rows(db):
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "case.disposed", {"case_id": 1})
    assert _rows(db) == []


def test_a_failing_endpoint_is_retried_with_backoff_until_it_succeeds(db, hooks, clock):
    hook_id = _add_hook(db, hooks.url())
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "case.disposed", {"case_id": 3})
    pub = outbox.Publisher(db, None, webhook_timeout_s=2.0)

    # 1: HTTP 500
    hooks.statuses = [500]
    clock.advance(1)
    t1 = clock.now
    assert pub.run_once() == (0, 1)
    [row] = _rows(db)
    assert row.attempts == 1 and row.delivered_at is None
    assert "500" in row.last_error
    assert row.next_attempt_at == t1 + timedelta(seconds=outbox.backoff(1))
    assert len(hooks.calls) == 1

    # not due yet: not called
    clock.advance(outbox.backoff(1) - 0.5)
    assert pub.run_once() == (0, 0)
    assert len(hooks.calls) == 1

    # 2: nothing listens at the URL any more
    with db.transaction() as s:
        s.get(Webhook, hook_id).url = f"http://127.0.0.1:{free_port()}/hook"
    clock.advance(0.5)
    t2 = clock.now
    assert pub.run_once() == (0, 1)
    [row] = _rows(db)
    assert row.attempts == 2 and row.delivered_at is None
    assert row.next_attempt_at == t2 + timedelta(seconds=outbox.backoff(2))
    assert "refused" in row.last_error.lower() or "URLError" in row.last_error

    # 3: the endpoint is back; once due, the row is delivered
    with db.transaction() as s:
        s.get(Webhook, hook_id).url = hooks.url()
    clock.advance(outbox.backoff(2) - 0.001)
    assert pub.run_once() == (0, 0)
    clock.advance(0.001)
    assert pub.run_once() == (1, 0)
    [row] = _rows(db)
    assert row.delivered_at is not None and row.attempts == 2
    assert len(hooks.calls) == 2
    assert json.loads(hooks.calls[-1]["body"])["case_id"] == 3
    assert hooks.calls[-1]["headers"]["X-Txwatch-Delivery"] == str(row.id)  # same delivery id on a retry


def test_backoff_doubles_up_to_its_cap():
    assert [outbox.backoff(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert outbox.backoff(10) == outbox.RETRY_MAX_S == outbox.backoff(100)


def test_a_slow_endpoint_times_out_and_is_retried(db, clock):
    started = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            started.set()
            time.sleep(1.0)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        _add_hook(db, f"http://127.0.0.1:{httpd.server_address[1]}/")
        with db.transaction() as s:
            outbox.enqueue_webhooks(s, "case.disposed", {"case_id": 1})
        clock.advance(1)
        assert outbox.Publisher(db, None, webhook_timeout_s=0.3).run_once() == (0, 1)
        assert started.is_set()
        [row] = _rows(db)
        assert row.attempts == 1 and row.delivered_at is None
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_removed_webhooks_pending_rows_are_not_called(db, hooks, database_url, monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    assert main(["webhooks", "add", hooks.url("/removed"), "--secret", SECRET]) == 0
    out = capsys.readouterr().out
    hook_id = int(out.split()[1])
    keep = _add_hook(db, hooks.url("/kept"))
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "case.disposed", {"case_id": 9})
    assert len(_rows(db)) == 2

    assert main(["webhooks", "remove", str(hook_id)]) == 0
    assert main(["webhooks", "list"]) == 0
    listing = capsys.readouterr().out
    assert f"{hook_id}\t{hooks.url('/removed')}\tremoved" in listing
    assert f"{keep}\t{hooks.url('/kept')}\tactive" in listing

    assert outbox.Publisher(db, None).run_once() == (2, 0)
    assert [c["path"] for c in hooks.calls] == ["/kept"]
    assert all(r.delivered_at is not None for r in _rows(db))  # settled, not retried forever
    # and new events no longer reach it
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "case.approved", {"case_id": 9})
    assert [r.target for r in _rows(db)][2:] == [str(keep)]


def test_webhooks_add_refuses_a_url_that_is_not_http(database_url, monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    assert main(["webhooks", "add", "ftp://example.org/x"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err


# -- Kafka ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kafka():
    with EmbeddedKafka() as k:
        yield k


@pytest.fixture(scope="module")
def kafka_settings(kafka):
    from stream.adapters.kafka import ensure_topics
    from stream.settings import load_settings

    s = load_settings(kafka_url=kafka.url, partitions=3)
    ensure_topics(s.model_copy(update={"input_topics": s.reviews_topic}))
    return s


@pytest.fixture
def kafka_send(kafka_settings):
    from workbench.commands import _kafka_sender

    send, close = _kafka_sender(kafka_settings)
    assert send is not None
    yield send
    close()


def _read_topic(settings, topic: str, keys: set[str], timeout_s: float = 15.0) -> list:
    """Records of ``topic`` whose key is one of ``keys``, read with assigned partitions."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             **settings.kafka_client_options())
    try:
        parts = consumer.partitions_for_topic(topic)
        assert parts, f"no topic {topic}"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        found = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(found) < len(keys):
            for records in consumer.poll(timeout_ms=200).values():
                found += [r for r in records if r.key is not None and r.key.decode() in keys]
        return found
    finally:
        consumer.close()


def _enqueue_labels(db: Database, topic: str, n: int) -> dict[str, dict]:
    tag = uuid.uuid4().hex[:8]
    records = {}
    with db.transaction() as s:
        for i in range(n):
            eid = f"ev-{tag}-{i}"
            r = label_record(eid, ("confirmed", "false_positive", "escalated")[i % 3], account_id=f"acct-{i % 2}",
                             reviewer="kim", decided_at=1767571200000 + i, case_id=i, note=f"n{i}")
            outbox.enqueue_kafka(s, topic, eid, encode(r).decode())
            records[eid] = r
    return records


def test_label_messages_reach_the_reviews_topic(db, kafka_settings, kafka_send):
    topic = kafka_settings.reviews_topic
    assert topic == "exchange.reviews"
    records = _enqueue_labels(db, topic, 6)
    assert outbox.Publisher(db, kafka_send).run_once() == (6, 0)
    assert all(r.delivered_at is not None and r.attempts == 0 for r in _rows(db))

    got = _read_topic(kafka_settings, topic, set(records))
    assert sorted(r.key.decode() for r in got) == sorted(records)
    for r in got:
        assert decode(r.value) == records[r.key.decode()]
    assert outbox.Publisher(db, kafka_send).run_once() == (0, 0)  # nothing sent twice


def test_without_kafka_label_rows_stay_pending(db, hooks, kafka_settings, kafka_send):
    topic = kafka_settings.reviews_topic
    records = _enqueue_labels(db, topic, 3)
    _add_hook(db, hooks.url())
    with db.transaction() as s:
        outbox.enqueue_webhooks(s, "alert.disposed", {"event_id": "x"})

    # no Kafka configured: the webhook goes, the labels wait (not failed, not retried with backoff)
    assert outbox.Publisher(db, None).run_once() == (1, 0)
    assert outbox.Publisher(db, None).run_once() == (0, 0)
    kafka_rows = [r for r in _rows(db) if r.sink == "kafka"]
    assert len(kafka_rows) == 3
    for r in kafka_rows:
        assert (r.delivered_at, r.attempts, r.last_error) == (None, 0, None)
        assert r.next_attempt_at <= utcnow()
    assert len(hooks.calls) == 1

    # once Kafka is there, they go
    assert outbox.Publisher(db, kafka_send).run_once() == (3, 0)
    got = _read_topic(kafka_settings, topic, set(records))
    assert sorted(r.key.decode() for r in got) == sorted(records)
    assert len(hooks.calls) == 1


def test_a_kafka_send_failure_is_retried(db, kafka_settings, clock):
    calls = []

    def flaky(topic: str, key: bytes, value: bytes) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise TimeoutError("broker away")

    records = _enqueue_labels(db, kafka_settings.reviews_topic, 2)
    clock.advance(1)
    assert outbox.Publisher(db, flaky).run_once() == (1, 1)
    rows = _rows(db)
    assert [r.delivered_at is None for r in rows] == [True, False]
    assert rows[0].attempts == 1 and "TimeoutError: broker away" in rows[0].last_error
    clock.advance(outbox.backoff(1))
    assert outbox.Publisher(db, flaky).run_once() == (1, 0)
    assert [k.decode() for k in calls] == [list(records)[0], list(records)[1], list(records)[0]]
