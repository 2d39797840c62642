"""``txwatch demo`` (the README's main command), small, on its embedded default: it starts
its own Tansu and Redis, trains, streams through a worker, reports, and stops everything."""

from __future__ import annotations

import re
import socket

import orjson
import pytest

from txwatch.cli import main

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_runs_end_to_end_on_embedded_servers_and_cleans_up(capsys, monkeypatch, tmp_path):
    for var in ("TXWATCH_KAFKA_URL", "TXWATCH_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    code = main(["demo", "--events", "30000", "--accounts", "300", "--days", "6", "--teacher-trees", "120",
                 "--workdir", str(tmp_path / "demo"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    summary = orjson.loads(out[out.index("{"):])
    assert summary["events_replayed"] > summary["fresh_day_events"] > 0
    assert summary["fresh_day_alerts"] > 0 and summary["alerts_total"] >= summary["fresh_day_alerts"]
    assert 0 < summary["fresh_day_precision"] <= 1 and 0 < summary["fresh_day_recall"] <= 1
    assert "read alerts in Redis" in err and "txwatch demo --keep" in err
    # Everything it started is gone: the broker's and Redis's ports no longer answer.
    ports = [int(p) for p in re.findall(r"embedded (?:Kafka-protocol broker \(Tansu\) on 127\.0\.0\.1|Redis on "
                                        r"redis://127\.0\.0\.1):(\d+)", err)]
    assert len(ports) == 2, err[:500]
    assert not any(_listening(p) for p in ports)


def _signs_in(port: int, name: str, password: str) -> bool:
    """Sign in to the workbench through its login form; True if it leads to the dashboard."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as c:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
        r = c.post("/login", data={"username": name, "password": password, "csrf": token, "next": "/"})
        return r.status_code == 200 and "Live alerts" in r.text


def test_sigterm_to_demo_keep_stops_everything_it_started(tmp_path):
    """``txwatch demo --keep`` waits for Ctrl-C; SIGTERM (what a process manager sends) must
    stop it the same way: worker, workbench, broker and Redis gone within seconds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("TXWATCH_KAFKA_URL", "TXWATCH_REDIS_URL")}
    log_path = tmp_path / "demo.log"
    demo = subprocess.Popen([sys.executable, "-m", "txwatch", "demo", "--keep", "--events", "30000", "--accounts",
                             "300", "--days", "6", "--teacher-trees", "120", "--workdir", str(tmp_path / "demo")],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while "servers keep running" not in log_path.read_text(errors="replace"):
            assert demo.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.5)
        err = log_path.read_text(errors="replace")
        worker_pid = int(re.search(r"worker started \(\w+ runner, pid (\d+)", err).group(1))
        ports = [int(p) for p in re.findall(r"embedded (?:Kafka-protocol broker \(Tansu\) on 127\.0\.0\.1|Redis on "
                                            r"redis://127\.0\.0\.1):(\d+)", err)]
        assert len(ports) == 2 and all(_listening(p) for p in ports)
        # The workbench is up, with a first login that works.
        ui_port = int(re.search(r"reviewers' workbench: http://127\.0\.0\.1:(\d+)/", err).group(1))
        name, password = re.search(r"sign in as (\w+) \(admin\): password (\S+)", err).groups()
        assert _listening(ui_port) and _signs_in(ui_port, name, password)
        ports.append(ui_port)
        t0 = time.monotonic()
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        assert time.monotonic() - t0 < 30
    finally:
        if demo.poll() is None:
            demo.kill()
    assert not any(_listening(p) for p in ports)
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{worker_pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{worker_pid}"), "the worker outlived the demo"
