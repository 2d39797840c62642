"""The shadow challenger on a real Redis: named by ``txwatch models challenger``, picked up by a
worker (the real model watcher and store), reported by ``txwatch models status``, gated by
``txwatch promote``, and refused with a clear error when it cannot be compared."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from lifecycle import registry, shadow
from stream.adapters.model_watcher import ModelWatcher, challenger_key
from stream.adapters.redis_store import RedisStore, StoreConfig
from stream.core.ports import Record
from stream.core.worker import WorkerCore
from stream.events.labels import label_record, write_labels
from stream.metrics import WorkerMetrics
from stream.settings import load_settings
from tests.lifecycle.test_promote import (ALL, cli, client, env, prefix, redis_server, rewrite, root,  # noqa: F401
                                          served, tabular, tampered)
from txwatch.local.embedded import free_port

pytestmark = pytest.mark.integration

CHALLENGER = "student-challenger"


@pytest.fixture(scope="module")
def challenger(models, root):  # noqa: F811
    """The good student under another version name: a challenger that agrees with the champion."""
    def edit(manifest, files):
        manifest["model_version"] = CHALLENGER

    return rewrite(models["student"], root / "challenger", edit)


async def _publish(topic, items):
    return None


def _worker(client):  # noqa: F811
    settings = load_settings()
    metrics = WorkerMetrics()
    watcher = ModelWatcher(settings, client, metrics)
    store = RedisStore(client, StoreConfig(prefix=settings.redis_prefix))
    return WorkerCore(settings, store, watcher.load_initial(), _publish, metrics, watcher, monitor=store), store


def _run(core, events, start=0):
    recs = [Record("t", 0, start + i, orjson.dumps(e), e["account_id"].encode(), None) for i, e in enumerate(events)]

    async def go():
        out = []
        for i in range(0, len(recs), 2000):
            out += await core.handle(recs[i:i + 2000])
        return out
    results = asyncio.run(go())
    core._flush_monitor(force=True)
    return results


def test_a_challenger_is_shadowed_reported_and_gated_on_its_shadow_run(
        small_history, events_file, env, client, prefix, served, challenger, capsys, tmp_path):  # noqa: F811
    code, record, err = cli(capsys, "models", "challenger", str(challenger), "--why", "retrained on labels")
    assert code == 0, err
    assert (record["version"], record["who"], record["why"]) == (CHALLENGER, "ana", "retrained on labels")

    core, store = _worker(client)
    assert core.shadow is not None and core.shadow.challenger.version == CHALLENGER
    results = _run(core, small_history[:6000])
    scored = sum(r.scored for r in results)
    alerts = [a for r in results for a in r.alerts]
    # Reviewers' keys hold the champion's alerts only, under its version.
    ids = store.alert_ids("t:0")
    assert sorted(ids) == sorted(a.event_id for a in alerts) and alerts
    assert {store.alert("t:0", i)["model_version"] for i in ids} == {core.student.version} != {CHALLENGER}

    # Status: the shadow figures, and precision on the alerts reviewers disposed.
    by_id = {e["event_id"]: e for e in small_history[:6000]}
    labels = tmp_path / "labels.jsonl"
    write_labels(labels, [label_record(a.event_id, "confirmed" if by_id[a.event_id]["label"] else "false_positive",
                                       account_id=a.account_id, reviewer="kim", decided_at=1) for a in alerts])
    code, status, err = cli(capsys, "models", "status", "--labels", str(labels))
    assert code == 0, err
    sh = status["challenger"]["shadow"]
    assert status["challenger"]["version"] == CHALLENGER and status["served"]["version"] == core.student.version
    assert sh["rows"] == scored and sh["champion_alerts"] == sh["challenger_alerts"] == sh["both"] == len(alerts)
    assert sh["alert_overlap"] == 1.0 and sh["spearman"] == pytest.approx(1.0)
    truth = sum(by_id[a.event_id]["label"] for a in alerts) / len(alerts)
    assert sh["precision"]["champion"]["precision"] == pytest.approx(truth) == sh["precision"]["challenger"]["precision"]
    assert sh["gate"]["failures"] == [f"shadow rows: {scored:,} scored in shadow, at least 10,000 needed"]

    # Promotion now: refused on the shadow run's size, nothing switched.
    code, _, err = cli(capsys, "promote", str(challenger), "--events", str(events_file), *ALL)
    assert code == 2 and f"shadow rows: {scored:,} scored in shadow" in err
    assert registry.pointer(client, prefix) is None and shadow.current(client, prefix)["version"] == CHALLENGER

    # More traffic: the gate passes, and the challenger stops being one in the same step.
    more = _run(core, small_history[6000:20_000], start=6000)
    code, record, err = cli(capsys, "promote", str(challenger), "--events", str(events_file), *ALL)
    assert code == 0, err
    check = record["figures"]["checks"]["shadow"]
    assert check["ok"] and check["figures"]["rows"] == scored + sum(r.scored for r in more)
    assert shadow.current(client, prefix) is None and client.get(challenger_key(prefix)) is None
    # The worker serves it and shadows nothing.
    core._next_poll = 0
    core._maybe_reload()
    assert core.student.version == CHALLENGER and core.shadow is None


def test_a_challenger_that_cannot_be_compared_is_refused(
        models, env, client, prefix, served, tabular, tampered, capsys):  # noqa: F811
    for directory, why in ((tabular, "are not the served model's"), (tampered, "sha256"),
                           (served, "is the served model")):
        code, out, err = cli(capsys, "models", "challenger", str(directory))
        assert (code, out) == (2, None) and why in err, err
        assert client.get(challenger_key(prefix)) is None
    # Named in Redis by hand: the worker refuses it, counts it and shadows nothing.
    client.set(challenger_key(prefix), orjson.dumps({"dir": str(tabular)}))
    core, _ = _worker(client)
    assert core.shadow is None
    assert core.metrics.value(core.metrics.reloads, result="challenger_refused") == 1
    # Cleared.
    code, out, _ = cli(capsys, "models", "challenger", "--clear")
    assert code == 0 and out["cleared"]["dir"] == str(tabular)


def test_redis_down_is_a_clear_error_for_the_challenger_commands(models, monkeypatch, served, capsys):  # noqa: F811
    monkeypatch.setenv("TXWATCH_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("TXWATCH_MODEL_DIR", str(served))
    for argv in (["models", "challenger", str(models["student"])], ["models", "challenger", "--clear"],
                 ["fidelity", "--once"]):
        code, out, err = cli(capsys, *argv)
        assert (code, out) == (2, None)
        assert err.startswith("txwatch: error: cannot reach Redis") and err.count("\n") == 1, err
