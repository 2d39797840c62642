"""``txwatch bench ui``: the workbench under a realistic load, one JSON object.

1. Fills a fresh database (SQLite by default, or ``--database-url``) with ``cases`` cases
   holding ``alerts`` alerts in all (scores, reasons, model versions, statuses and ratings
   drawn like production's: a long tail of small cases, a few large ones).
2. Starts ``txwatch ui`` as its own process on an embedded Redis, as users run it.
3. Times the queue page (HTML, several sorts and filters, deep keyset pages), the API's case
   list and case file, over real HTTP: p50 / p95 / max in ms.
4. Opens ``dashboards`` live connections (server-sent events), commits alerts to Redis
   through the workers' own store at ``live_rate`` per second, and measures each alert's
   delay from its commit (``created_ms``) to its arrival on every dashboard.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

REASONS = ("out_balance_ratio", "log_usd", "new_device", "wd_cnt_1h", "log_gap_novelty", "near_threshold_24h",
           "cnt_5m", "new_country", "wd_vs_last_deposit", "round_trip")


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2)}


def fill(db, cases: int, alerts: int, *, seed: int = 0, log: Callable[[str], None] = lambda m: None) -> dict:
    """Insert ``cases`` cases and ``alerts`` alerts (Core inserts in batches); return what was made."""
    from sqlalchemy import insert, text

    from workbench.models import AlertRecord, Case, Rating
    from workbench.risk import level_of
    from workbench.models import utcnow

    rng = random.Random(seed)
    # Alerts per case: a long tail (most cases hold a few, some hold many), summing to `alerts`.
    weights = np.random.default_rng(seed).pareto(1.5, cases) + 1.0
    per_case = np.maximum(1, np.floor(weights / weights.sum() * alerts)).astype(int)
    per_case[np.argmax(per_case)] += alerts - int(per_case.sum())
    now = utcnow()
    t0 = time.perf_counter()
    statuses = ["open"] * 5 + ["in_review"] + ["pending_approval"] + ["closed"] * 13
    models = ["student-a", "student-b"]
    case_rows, rating_rows, alert_rows = [], [], []
    eid = 0
    base_ms = int(time.time() * 1000) - 30 * 86_400_000
    with db.engine.begin() as conn:
        for cid in range(1, cases + 1):
            n = int(per_case[cid - 1])
            account = f"acct-{cid:07d}"
            status = rng.choice(statuses)
            risk = rng.random() ** 2
            scores = [min(1.0, 0.3 + 0.7 * rng.random()) for _ in range(n)]
            first = base_ms + rng.randrange(0, 29 * 86_400_000)
            reason = rng.choice(REASONS)
            case_rows.append({"id": cid, "account_id": account, "status": status, "opened_at": now,
                              "updated_at": now, "closed_at": now if status == "closed" else None,
                              "alert_count": n, "open_alerts": 0 if status == "closed" else n,
                              "max_score": max(scores), "first_alert_ms": first, "last_alert_ms": first + n * 60_000,
                              "top_reason": reason, "model_version": rng.choice(models),
                              "risk_score": risk, "risk_level": level_of(risk)})
            rating_rows.append({"account_id": account, "score": risk, "level": level_of(risk), "level_since_ms": first,
                                "updated_ms": first, "confirmed": 0})
            for j, score in enumerate(scores):
                eid += 1
                ts = first + j * 60_000
                event = {"event_id": f"b-{eid}", "ts": ts, "account_id": account, "type": "withdrawal", "asset": "BTC",
                         "amount": 0.5, "usd_value": 25_000.0, "counterparty": f"addr-{eid % 5000}"}
                alert_rows.append({"event_id": f"b-{eid}", "case_id": cid, "account_id": account, "ts": ts,
                                   "score": score, "threshold": 0.3, "model_version": case_rows[-1]["model_version"],
                                   "reasons": [{"feature": reason, "contribution": 1.5}], "event": event,
                                   "features": {reason: 0.97}, "partition_key": "bench:0",
                                   "created_ms": ts, "received_at": now, "top_reason": reason})
            if len(alert_rows) >= 20_000 or cid == cases:
                if case_rows:
                    conn.execute(insert(Case), case_rows)
                    conn.execute(insert(Rating), rating_rows)
                conn.execute(insert(AlertRecord), alert_rows)
                case_rows, rating_rows, alert_rows = [], [], []
                log(f"  filled {cid:,}/{cases:,} cases, {eid:,} alerts ({time.perf_counter() - t0:.0f}s)")
    # Planner statistics, as autovacuum (PostgreSQL) would gather them after a bulk load;
    # without them PostgreSQL sorts every active case per page instead of walking the index.
    with db.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    return {"cases": cases, "alerts": eid, "fill_seconds": round(time.perf_counter() - t0, 1)}


def _time(client, path: str, n: int, **kw) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path, **kw)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
    return out


def _signed_in(base: str, user: str, password: str):
    import httpx

    c = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": user, "password": password, "csrf": token, "next": "/"})
    if r.status_code != 200:
        raise RuntimeError(f"could not sign in: {r.status_code}")
    return c


def _queue_and_api(base: str, password: str, token: str, requests: int) -> dict[str, Any]:
    import httpx

    page = _signed_in(base, "bench", password)
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    queue_paths = ["/cases", "/cases?sort=score", "/cases?sort=age", "/cases?sort=recent", "/cases?level=critical",
                   "/cases?reason=log_usd", "/cases?status=pending_approval", "/cases?assignee=none&sort=score"]
    for p in queue_paths[:2]:
        _time(page, p, 2)  # warm caches once, not measured
    queue = [t for _ in range(max(1, requests // len(queue_paths))) for p in queue_paths for t in _time(page, p, 1)]
    # Deep pages: follow the keyset cursor 20 pages down.
    deep, url = [], "/api/v1/cases?limit=50"
    for _ in range(20):
        t = time.perf_counter()
        body = api.get(url).json()
        deep.append((time.perf_counter() - t) * 1000)
        if not body.get("next"):
            break
        url = f"/api/v1/cases?limit=50&after={body['next']}"
    api_list = [t for _ in range(max(1, requests // 4)) for p in ("/api/v1/cases", "/api/v1/cases?sort=score",
                                                                   "/api/v1/cases?level=high", "/api/v1/cases?sort=age")
                for t in _time(api, p, 1)]
    ids = [random.randrange(1, 1000) for _ in range(max(1, requests // 2))]
    api_case = [t for i in ids for t in _time(api, f"/api/v1/cases/{i}", 1)]
    page.close()
    api.close()
    return {"queue_page": _pct(queue), "api_list": _pct(api_list), "api_list_deep_pages": _pct(deep),
            "api_case": _pct(api_case)}


async def _dashboards(base: str, cookie: str, n: int, ready: asyncio.Event, arrivals: list[list[float]],
                      stop: asyncio.Event) -> None:
    import httpx

    async def one(i: int, client) -> None:
        async with client.stream("GET", "/dashboard/live") as resp:
            async for line in resp.aiter_lines():
                if line.startswith(": connected"):
                    arrivals[i].append(-1.0)
                    if sum(1 for a in arrivals if a) == n:
                        ready.set()
                elif line.startswith("data: "):
                    item = orjson.loads(line[6:])
                    arrivals[i].append(time.time() * 1000 - float(item["created_ms"]))
                if stop.is_set():
                    return

    async with httpx.AsyncClient(base_url=base, cookies={"txwatch_session": cookie}, timeout=None,
                                 limits=httpx.Limits(max_connections=n + 5)) as client:
        tasks = [asyncio.create_task(one(i, client)) for i in range(n)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _live(base: str, cookie: str, store, dashboards: int, rate: float, seconds: float) -> dict[str, Any]:
    from stream.core.pipeline import BatchResult
    from stream.events.alerts import Alert

    arrivals: list[list[float]] = [[] for _ in range(dashboards)]

    async def run() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        listeners = asyncio.create_task(_dashboards(base, cookie, dashboards, ready, arrivals, stop))
        await asyncio.wait_for(ready.wait(), 60)
        n = int(rate * seconds)
        offset = -1
        t0 = time.perf_counter()
        for k in range(n):
            due = t0 + k / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            a = Alert(f"live-{k}", f"acct-live-{k % 50}", int(time.time() * 1000), 0.9, 0.3, "student-a",
                      [("log_usd", 1.2)], {"event_id": f"live-{k}", "type": "withdrawal", "usd_value": 9000.0},
                      "live:0", {"log_usd": 9.1})
            await asyncio.to_thread(store.commit, BatchResult("live:0", offset, offset + 1, alerts=[a]))
            offset += 1
        await asyncio.sleep(2.0)
        stop.set()
        await listeners

    asyncio.run(run())
    delays = [d for a in arrivals for d in a if d >= 0]
    expected = dashboards * int(rate * seconds)
    return {"dashboards": dashboards, "alerts": int(rate * seconds), "rate_per_s": rate, "delivered": len(delays),
            "expected": expected, **({"delay": _pct(delays)} if delays else {})}


def bench_ui(*, cases: int, alerts: int, database_url: str | None, dashboards: int, live_rate: float,
             live_seconds: float, requests: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the benchmark; the JSON-ready result."""
    import resource

    import redis

    from stream.adapters.redis_store import RedisStore, StoreConfig
    from stream.settings import load_settings
    from txwatch.local.embedded import EmbeddedRedis, die_with_parent, free_port, wait_for_port
    from workbench import auth
    from workbench.db import Database

    work = Path(tempfile.mkdtemp(prefix="txwatch-bench-ui-"))
    db_url = database_url or f"sqlite:///{work / 'workbench.db'}"
    settings = load_settings(database_url=db_url)
    db = Database.from_settings(settings)
    log(f"filling {db.engine.dialect.name} with {cases:,} cases and {alerts:,} alerts")
    made = fill(db, cases, alerts, log=log)
    password = "bench-password-1"
    with db.transaction() as s:
        user = auth.create_user(s, "bench", password, "admin")
        token = auth.issue_token(s, user, "bench")
    db.dispose()
    with EmbeddedRedis() as red:
        port = free_port()
        env = {**os.environ, **settings.to_env(), "TXWATCH_DATABASE_URL": db_url, "TXWATCH_REDIS_URL": red.url,
               "TXWATCH_REDIS_PREFIX": "bench", "TXWATCH_UI_PORT": str(port), "TXWATCH_KAFKA_URL": ""}
        ui_log = open(work / "ui.log", "wb")
        ui = subprocess.Popen([sys.executable, "-m", "txwatch", "ui"], env=env, stdout=ui_log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_port(port, ui, "workbench", work / "ui.log", timeout=60)  # uvicorn listens once started
            log(f"timing the queue and the API ({requests} requests each)")
            http = _queue_and_api(base, password, token, requests)
            c = _signed_in(base, "bench", password)
            cookie = c.cookies.get("txwatch_session")
            c.close()
            log(f"live: {dashboards} dashboards, {live_rate:g} alerts/s for {live_seconds:g}s")
            store = RedisStore(redis.Redis.from_url(red.url), StoreConfig(prefix="bench"))
            live = _live(base, cookie, store, dashboards, live_rate, live_seconds)
            rss = _rss_mb(ui.pid)
        finally:
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(15)
            except subprocess.TimeoutExpired:
                ui.kill()
            ui_log.close()
    return {"database": db.engine.dialect.name, **made, **http, "live": live, "ui_rss_mb": rss,
            "bench_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "targets": {"queue_p95_ms": 100, "live_delay_p95_ms": 1000}}


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
