"""``txwatch ui`` stops within seconds on SIGTERM and on Ctrl-C, even with Redis and Kafka gone
and a dashboard's live connection open."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from stream.adapters.kafka import ensure_topics
from stream.settings import load_settings
from tests.integration.conftest import ROOT, env_for
from txwatch.cli import main
from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis, die_with_parent, free_port, wait_for_port

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_stops_within_seconds_with_its_servers_gone(tmp_path, monkeypatch, sig):
    db_url = f"sqlite:///{tmp_path / 'wb.db'}"
    monkeypatch.setenv("TXWATCH_DATABASE_URL", db_url)
    monkeypatch.setenv("WB_PW", "stop-test-password")
    assert main(["users", "add", "ann", "--role", "viewer", "--password-env", "WB_PW"]) == 0
    kafka, red = EmbeddedKafka(), EmbeddedRedis()
    kafka.start()
    red.start()
    port = free_port()
    s = load_settings(kafka_url=kafka.url, redis_url=red.url, database_url=db_url, ui_port=port, metrics_port=0)
    ensure_topics(s.model_copy(update={"input_topics": s.reviews_topic}))
    ui = subprocess.Popen([sys.executable, "-m", "txwatch", "ui"], env=env_for(s),
                          cwd=ROOT, stdout=open(tmp_path / "ui.log", "wb"), stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_port(port, ui, "workbench", tmp_path / "ui.log", timeout=30)
        client = httpx.Client(base_url=base, follow_redirects=True)
        import re

        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"username": "ann", "password": "stop-test-password", "csrf": token})

        def hold_live_connection() -> None:  # a dashboard left open
            try:
                with client.stream("GET", "/dashboard/live", timeout=60) as r:
                    for _ in r.iter_lines():
                        pass
            except httpx.HTTPError:
                pass
        threading.Thread(target=hold_live_connection, daemon=True).start()
        time.sleep(1.0)
        red.kill()
        kafka.kill()
        time.sleep(1.0)
        t0 = time.monotonic()
        ui.send_signal(sig)
        ui.wait(20)
        took = time.monotonic() - t0
        assert took < 10, f"txwatch ui took {took:.1f}s to stop"
    finally:
        if ui.poll() is None:
            ui.kill()
        red.stop()
        kafka.stop()
