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
