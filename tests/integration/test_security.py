"""Reliability: TLS to Kafka and Redis, Redis credentials, and secrets kept out of logs.

The worker runs against a Tansu broker and a password-protected redis-server, each
behind a TLS proxy with a self-signed certificate the worker must verify (see
``tests/integration/tls.py`` for why a proxy). Kafka SASL cannot be exercised here: Tansu
0.6's SCRAM exchange breaks aiokafka's client (``KeyError: 'v'``) and kafka-python's
(no bootstrap), so the SASL settings are checked at the client-configuration level.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import orjson
import pytest
import redis

from stream.adapters.kafka import ensure_topics
from stream.adapters.redis_store import redis_client
from stream.runners.faust_app import _credentials
from stream.settings import load_settings
from tests.integration.conftest import ROOT, env_for, offline, start_worker
from tests.integration.tls import TLSProxy, self_signed
from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

REDIS_SECRET = "r3dis-" + uuid.uuid4().hex
SASL_SECRET = "s4sl-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """Tansu and a password-protected Redis, both reachable only through TLS proxies."""
    root = tmp_path_factory.mktemp("secure")
    cert, key = self_signed(root)
    kafka_tls_port = free_port()
    with EmbeddedKafka(advertised_port=kafka_tls_port) as kafka, \
            EmbeddedRedis(password=REDIS_SECRET) as red, \
            TLSProxy(kafka.port, cert, key, port=kafka_tls_port) as kproxy, \
            TLSProxy(red.port, cert, key) as rproxy:
        yield {"cert": cert, "kafka": kafka, "redis": red, "kafka_tls": kproxy.port, "redis_tls": rproxy.port}


def secure_settings(secure, models, **extra):
    tag = uuid.uuid4().hex[:8]
    return load_settings(**(dict(
        kafka_url=f"kafka://127.0.0.1:{secure['kafka_tls']}", kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(secure["cert"]), redis_url=f"rediss://127.0.0.1:{secure['redis_tls']}/0",
        redis_password=REDIS_SECRET, redis_tls_ca_file=str(secure["cert"]),
        kafka_sasl_password=SASL_SECRET,  # set but unused with SSL: must never be printed either
        input_topics=f"events-{tag}", dead_letter_topic=f"dlq-{tag}", alerts_topic=f"alerts-{tag}",
        group_id=f"g-{tag}", redis_prefix=f"t{tag}", partitions=2, model_dir=str(models["student"]),
        metrics_port=0, session_timeout_s=6, rebalance_timeout_s=6, log_interval_s=1) | extra))


def test_worker_over_tls_with_redis_password_keeps_secrets_out_of_its_logs(secure, models, small_history, tmp_path):
    from kafka import KafkaProducer

    s = secure_settings(secure, models)
    ensure_topics(s)
    events = small_history[:3000]
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, **s.kafka_client_options())
    for e in events:
        producer.send(s.topics[0], value=orjson.dumps(e), key=e["account_id"].encode())
    producer.send(s.topics[0], value=b"{broken", key=b"k")
    producer.flush()
    producer.close()
    log_path = tmp_path / "worker.log"
    worker = start_worker(s, "faust", log_path, TXWATCH_LOG_LEVEL="DEBUG")
    client = redis_client(s)  # TLS + password, as the worker connects
    store_prefix = f"{s.redis_prefix}:{{{s.topics[0]}"
    try:
        deadline = time.monotonic() + 120
        while sum(int(client.get(f"{store_prefix}:{p}}}:offset") or -1) + 1 for p in range(2)) < len(events) + 1:
            assert worker.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "worker did not finish over TLS"
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(30)
    expected, _ = offline(models, events)
    got = {e.decode() for p in range(2) for e in client.zrange(f"{store_prefix}:{p}}}:alerts:by_time", 0, -1)}
    assert got == expected and expected
    log = log_path.read_text()
    assert "events=" in log and "DEBUG" in log  # the log captured the worker's debug output
    assert REDIS_SECRET not in log and SASL_SECRET not in log


def test_plaintext_clients_cannot_reach_the_tls_ports(secure, models):
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=secure["redis_tls"], password=REDIS_SECRET, socket_timeout=3).ping()


def test_redis_writes_need_the_password_and_errors_do_not_print_it(secure, models, tmp_path):
    anonymous = redis.Redis(port=secure["redis"].port, socket_timeout=3)
    for write in (lambda: anonymous.set("txwatch:model:dir", "/tmp/evil"),
                  lambda: anonymous.hset("txwatch:{t:0}:alert:x", "status", "closed"),
                  lambda: anonymous.delete("txwatch:{t:0}:state")):
        with pytest.raises(redis.AuthenticationError):  # NOAUTH: nothing changes without credentials
            write()
    s = secure_settings(secure, models, redis_password="wrong-" + REDIS_SECRET)
    done = subprocess.run([sys.executable, "-m", "txwatch", "worker", "--runner", "plain"], env=env_for(s),
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refused the credentials" in done.stderr
    assert "Traceback" not in done.stderr
    assert REDIS_SECRET not in done.stderr + done.stdout and SASL_SECRET not in done.stderr + done.stdout
    in_url = f"redis://:{REDIS_SECRET}@127.0.0.1:1/0"  # a password inside an unreachable URL
    done = subprocess.run([sys.executable, "-m", "txwatch", "worker", "--runner", "plain"],
                          env=env_for(s, TXWATCH_REDIS_URL=in_url, TXWATCH_REDIS_PASSWORD=""),
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 2 and "cannot reach Redis at redis://:***@127.0.0.1:1/0" in done.stderr
    assert REDIS_SECRET not in done.stderr + done.stdout


def test_sasl_settings_reach_both_kafka_clients_and_print_masked():
    s = load_settings(kafka_url="kafka://k:9093", kafka_security_protocol="sasl_ssl",
                      kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="txwatch",
                      kafka_sasl_password=SASL_SECRET, redis_password=REDIS_SECRET)
    opts = s.kafka_client_options()
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "txwatch" and opts["sasl_plain_password"] == SASL_SECRET
    assert opts["ssl_context"].verify_mode.name == "CERT_REQUIRED"
    creds = _credentials(s)  # faust's credentials object
    assert creds.username == "txwatch" and creds.password == SASL_SECRET and creds.ssl_context is not None
    for text in (repr(s), str(s), str(s.model_dump())):
        assert SASL_SECRET not in text and REDIS_SECRET not in text
