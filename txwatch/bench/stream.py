"""``txwatch bench stream``: throughput, latency and memory of the stream path, as one JSON object.

Everything runs in one invocation against the same broker and Redis (embedded unless
``TXWATCH_KAFKA_URL`` / ``TXWATCH_REDIS_URL`` are set), on the same events:

* ``aiokafka_drain``: a bare aiokafka group consumer reading the topic (transport ceiling);
  it and the two ``core_plain`` phases below run in turns, ``--rounds`` times each, and each
  reports its best run, as the faust agents do;
* ``faust_noop``: a faust agent doing nothing but ``stream.take`` (faust's own ceiling);
* ``faust_noop_bulk``: a faust agent doing nothing but take events as the worker's agent
  takes them (the worker's ratio to it is the cost of txwatch's own work); the two no-op
  agents and ``faust_worker`` run in turns, ``--rounds`` times each (default 2), and each
  reports its best run, with every run's rate in ``runs_events_per_s``;
* ``core_plain``: the pipeline core (parse, features, score, one Redis script per partition
  batch, offset commit) driven by the plain aiokafka runner, no faust;
* ``faust_worker``: one ``txwatch worker`` process (faust runner), end to end;
* ``latency``: produce time to alert readable in Redis (the alert's pub/sub message,
  published inside the commit script) at a fixed offered rate, on a faust worker process
  caught up with the backlog (and its peak RSS);
* ``latency_plain``: the same on a plain-runner worker process (no faust);
* ``transport_latency``: the floor under it: produce time to a bare aiokafka group
  consumer receiving the record, same producer, same offered rate, no processing; the
  three latency phases run in turns, ``--rounds`` times each, each run on topics of its own
  loaded with the same backlog (and a fresh worker), and each phase reports its run with
  the lowest p99, with every run's p99 in ``runs_p99_ms``;
* ``scale_out``: two faust worker processes in one group on the same topic;
* worker peak RSS (``VmHWM``) of the worker processes;
* ``core_plain_bare``: ``core_plain`` with the production monitoring off (no drift windows,
  no fidelity sample, no challenger), for comparison: every other worker phase runs with
  drift on (``TXWATCH_DRIFT_WINDOW_S``), the fidelity sample on (``TXWATCH_FIDELITY_SAMPLE_RATE``)
  and a shadow challenger loaded (a copy of the model under another version name: the
  challenger costs what the champion costs);
* ``monitoring_cost``: each of those three timed alone on the same events' feature rows, in
  microseconds per event, with the pipeline's own cost per event beside them, and its three
  steps each timed alone (``pipeline_steps_us_per_event``: reading the batch into columns (the
  compiled scan, or parse_events where it gives up, as the pipeline does), admission and features,
  the student's scores).

Rates exclude start-up and group joins: they are counted from the first processed batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import orjson

from stream.adapters.model_watcher import challenger_key
from stream.settings import Settings, load_settings


def proc_memory_mb(pid: int, field: str = "VmHWM") -> float | None:
    """A memory figure of a process from ``/proc/<pid>/status`` in MB (``VmHWM``: peak RSS,
    ``VmRSS``: current RSS), or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _peak_rss_mb(pid: int) -> float | None:
    return proc_memory_mb(pid, "VmHWM")


def _env(s: Settings) -> dict:
    return dict(os.environ) | s.to_env()


async def _produce(s: Settings, topic: str, payloads: list[bytes], keys: list[bytes | None]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks=1, linger_ms=10,
                                max_batch_size=512 * 1024, **s.kafka_client_options())
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = []
        for value, key in zip(payloads, keys):
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def _drain(s: Settings, topic: str, n: int) -> dict:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=s.bootstrap_servers, group_id=f"drain-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=6000, rebalance_timeout_ms=6000, max_poll_records=5000,
                                **s.kafka_client_options())
    await consumer.start()
    count = first = 0
    t0 = None
    try:
        while count < n:
            batch = await consumer.getmany(timeout_ms=50, max_records=5000)
            got = sum(len(v) for v in batch.values())
            if got and t0 is None:
                t0, first = time.perf_counter(), got
            count += got
        elapsed = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {"records": count, "seconds": round(elapsed, 3), "events_per_s": round((count - first) / elapsed)}


def servers(stack: ExitStack, base: Settings) -> dict:
    """``kafka_url``/``redis_url`` overrides: embedded servers (closed with ``stack``) for
    whichever of the two ``base`` does not configure."""
    from txwatch.local.embedded import EmbeddedKafka, EmbeddedRedis

    overrides: dict = {}
    if not base.kafka_url:
        overrides["kafka_url"] = stack.enter_context(EmbeddedKafka()).url
    if not base.redis_url:
        overrides["redis_url"] = stack.enter_context(EmbeddedRedis()).url
    return overrides


def _wait_rate(client, s: Settings, topic: str, n: int, procs: list, timeout: float = 600) -> dict:
    """Poll stored offsets: rate from the first processed record to the n-th."""
    from stream.adapters.redis_store import redis_store
    from stream.core.pipeline import partition_key

    store = redis_store(s, client)
    pkeys = [partition_key(topic, p) for p in range(s.partitions)]
    t0 = None
    first = 0
    deadline = time.monotonic() + timeout
    while True:
        done = store.applied_count(pkeys)
        now = time.perf_counter()
        if done and t0 is None:
            t0, first = now, done
        if done >= n:
            elapsed = max(now - t0, 1e-9)
            return {"records": done, "seconds": round(elapsed, 3),
                    "events_per_s": round((done - first) / elapsed) if done > first else None}
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {n} processed")
        time.sleep(0.01)


def _start_worker(s: Settings, runner: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "txwatch", "worker", "--runner", runner], env=_env(s),
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_stream(events_path: str, model_dir: str, *, n: int = 200_000, partitions: int = 4,
                 latency_rate: float = 2000.0, latency_seconds: float = 30.0, workdir: str = "runs/bench",
                 monitoring: bool = True, rounds: int = 2, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run every phase; return the JSON-ready result. ``monitoring=False``: every worker
    phase without drift, fidelity sample and challenger (``core_plain_bare`` is then
    ``core_plain`` again). ``rounds``: runs each of the drain, the cores, the no-op agents and the faust worker."""
    import redis

    from stream.adapters.kafka import ensure_topics
    from stream.events.files import iter_payloads
    from stream.events.schema import account_key
    from stream.scoring.student import load_student

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    base = load_settings()
    payloads: list[bytes] = []
    for _, payload in iter_payloads(events_path):
        payloads.append(payload)
        if len(payloads) >= n:
            break
    keys = [account_key(p)[0] for p in payloads]
    n = len(payloads)
    student = load_student(model_dir)
    result: dict = {"benchmark": "stream", "events": n, "partitions": partitions, "model": student.version,
                    "machine": {"cpus": os.cpu_count()}}
    with ExitStack() as stack:
        overrides = servers(stack, base)
        result["broker"] = "embedded Tansu" if not base.kafka_url else "configured"
        tag = uuid.uuid4().hex[:6]
        topic = f"bench-{tag}"

        challenger = _challenger_copy(model_dir, work / "challenger")
        client_box: list = []

        on = monitoring

        def settings_for(name: str, monitoring: bool = on, **kw) -> Settings:
            s = load_settings(**{**overrides, "input_topics": topic, "partitions": partitions,
                                 "group_id": f"{name}-{tag}", "redis_prefix": f"bench-{name}-{tag}",
                                 "dead_letter_topic": f"{topic}-dlq", "alerts_topic": f"{topic}-alerts",
                                 "model_dir": model_dir, "metrics_port": 0, "session_timeout_s": 6,
                                 "rebalance_timeout_s": 6, "log_interval_s": 5,
                                 **({} if monitoring else {"drift_window_s": 0, "fidelity_sample_rate": 0}), **kw})
            if monitoring and client_box:
                client_box[0].set(challenger_key(s.redis_prefix), orjson.dumps({"dir": str(challenger)}))
            return s

        s0 = settings_for("setup")
        ensure_topics(s0)
        client = redis.Redis.from_url(s0.redis_url)
        client_box.append(client)
        result["monitoring"] = ({"drift_window_s": s0.drift_window_s, "fidelity_sample_rate": s0.fidelity_sample_rate,
                                 "challenger": str(challenger)} if on else "off")
        log(f"producing {n:,} events to {topic} ({partitions} partitions)")
        seconds = asyncio.run(_produce(s0, topic, payloads, keys))
        result["produce"] = {"seconds": round(seconds, 3), "events_per_s": round(n / seconds)}

        # Like the faust agents below, the drain and the core run in turns, ``rounds`` times
        # each, and the best run of each is reported (their ratio is a target too).
        drains, bares, cores = [], [], []
        for r in range(rounds):
            log(f"bare aiokafka drain, round {r + 1} of {rounds}")
            drains.append(asyncio.run(_drain(s0, topic, n)))
            log(f"pipeline core on the plain aiokafka runner, monitoring off, round {r + 1} of {rounds}")
            bares.append(_core_plain(client, settings_for(f"bare{r}", monitoring=False), topic, n))
            log(f"pipeline core on the plain aiokafka runner, drift, fidelity sample and challenger on, "
                f"round {r + 1} of {rounds}")
            s_plain = settings_for(f"plain{r}")
            cores.append(_core_plain(client, s_plain, topic, n))
            if on:
                cores[-1]["monitored"] = _monitored(client, s_plain, student.version, f"{student.version}-challenger")
        result["aiokafka_drain"] = _best(drains)
        result["core_plain_bare"] = _best(bares)
        result["core_plain"] = _best(cores)

        log("monitoring cost per event (drift, fidelity sample, shadow challenger)")
        result["monitoring_cost"] = _monitoring_cost(payloads[:50_000], model_dir, str(challenger), s0)

        # The faust agents' rates are compared as a ratio, and this machine's speed drifts by up to
        # 40 % between consecutive phases: the two no-op agents and the worker run in turns,
        # ``rounds`` times each, and the best run of each is compared (noise only ever slows a
        # run down).
        noops, bulks, workers = [], [], []
        for r in range(rounds):
            log(f"no-op faust agent (stream.take only), round {r + 1} of {rounds}")
            noops.append(_noop(settings_for(f"noop{r}"), topic, n))
            log(f"no-op faust agent taking events as the worker does, round {r + 1} of {rounds}")
            bulks.append(_noop(settings_for(f"bulk{r}"), topic, n, "bulk"))
            log(f"one faust worker, end to end, round {r + 1} of {rounds}")
            s_faust = settings_for(f"faust{r}")
            with _stopped_at_exit(_start_worker(s_faust, "faust", work / f"faust_worker{r}.log")) as worker:
                workers.append(_wait_rate(client, s_faust, topic, n, [worker]))
                workers[-1]["peak_rss_mb"] = _peak_rss_mb(worker.pid)
        result["faust_noop"] = _best(noops)
        result["faust_noop_bulk"] = _best(bulks)
        result["faust_worker"] = _best(workers)

        # Latency, like the rates, in turns, ``rounds`` times each, each phase's best run
        # reported (a p99 of some 200 alerts moved by 20 ms from one 30-second phase to the
        # next). Every run has topics of its own, loaded with the same backlog, and a fresh
        # worker caught up with it: the embedded broker's fetch slows as a partition collects
        # record batches, and the paced sender adds some 200 a second to each partition, so a
        # run on a topic an earlier run had written to would be timed on a slower broker
        # (docs/benchmarks.md, "Latency rounds on fresh topics").
        faust_lat, plain_lat, transport_lat = [], [], []
        for r in range(rounds):
            log(f"latency at {latency_rate:,.0f} events/s offered for {latency_seconds:.0f}s: faust worker, "
                f"plain runner, bare transport, each on fresh topics holding the backlog, round {r + 1} of {rounds}")
            for runner, runs in (("faust", faust_lat), ("plain", plain_lat)):
                lat_topic = f"{topic}-{runner}lat{r}"
                s_lat = settings_for(f"{runner}lat{r}", input_topics=lat_topic, alerts_topic=f"{lat_topic}-alerts",
                                     dead_letter_topic=f"{lat_topic}-dlq")
                runs.append(_caught_up_latency(client, s_lat, runner, payloads, keys, latency_rate,
                                               latency_seconds, work / f"{runner}_latency{r}.log"))
            s_tl = settings_for(f"transport{r}", input_topics=f"{topic}-transport{r}")
            ensure_topics(s_tl)
            asyncio.run(_produce(s_tl, s_tl.topics[0], payloads, keys))
            transport_lat.append(asyncio.run(_transport_latency(s_tl, payloads, keys, latency_rate,
                                                                latency_seconds, backlog=n)))
        result["latency"] = _lowest_p99(faust_lat)
        result["latency_plain"] = _lowest_p99(plain_lat)
        result["transport_latency"] = _lowest_p99(transport_lat)

        log("two faust workers in one group")
        s_two = settings_for("two")
        workers = [_start_worker(s_two, "faust", work / f"worker{i}.log") for i in range(2)]
        try:
            time.sleep(1.0)
            result["scale_out"] = _wait_rate(client, s_two, topic, n, workers)
            result["scale_out"]["workers"] = 2
            result["scale_out"]["peak_rss_mb"] = [_peak_rss_mb(w.pid) for w in workers]
        finally:
            for w in workers:
                _stop(w)

    result.update(summary(result))
    return result


def summary(result: dict) -> dict:
    """The figures the issues set targets on, from a run's phases: ``ratios`` (faust worker
    over the no-op agent, and over the no-op agent that takes events as the worker does,
    core over the bare drain, monitoring on over off, two workers over one) and
    ``p99_above_transport_ms`` (each worker's produce-to-alert p99 minus the bare
    transport's in the same run). A figure whose phases did not run is None."""
    def rate(name: str) -> float | None:
        return result.get(name, {}).get("events_per_s")

    def over(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    floor = result.get("transport_latency", {}).get("p99_ms")

    def above(name: str) -> float | None:
        p99 = result.get(name, {}).get("p99_ms")
        return round(p99 - floor, 2) if p99 is not None and floor is not None else None

    return {
        "ratios": {
            "faust_worker_over_noop": over(rate("faust_worker"), rate("faust_noop")),
            "faust_worker_over_noop_bulk": over(rate("faust_worker"), rate("faust_noop_bulk")),
            "core_over_drain": over(rate("core_plain"), rate("aiokafka_drain")),
            "core_monitoring_on_over_off": over(rate("core_plain"), rate("core_plain_bare")),
            "two_workers_over_one": over(rate("scale_out"), rate("faust_worker")),
        },
        "p99_above_transport_ms": {"faust_worker": above("latency"), "plain": above("latency_plain")},
    }


def _noop(s: Settings, topic: str, n: int, mode: str = "take") -> dict:
    """The no-op faust agent's rate over the topic (its own process); ``mode`` as in
    :mod:`txwatch.bench.noop`."""
    done = subprocess.run([sys.executable, "-m", "txwatch.bench.noop", topic, str(n), "5000", mode], env=_env(s),
                          capture_output=True, text=True, timeout=600)
    # faust may prefix the line with its log header: take the JSON object in it.
    output = done.stdout + "\n" + done.stderr  # faust routes stdout into its log (stderr)
    lines = [ln[ln.index('{"records"'):] for ln in output.splitlines() if '{"records"' in ln]
    return orjson.loads(lines[-1]) if lines else {"error": (done.stdout + done.stderr)[-500:]}


def _best(runs: list[dict]) -> dict:
    """The fastest of a phase's runs, with every run's rate beside it."""
    rated = [r for r in runs if r.get("events_per_s")]
    best = dict(max(rated, key=lambda r: r["events_per_s"]) if rated else runs[-1])
    best["runs_events_per_s"] = [r.get("events_per_s") for r in runs]
    return best


def _lowest_p99(runs: list[dict]) -> dict:
    """The latency run with the lowest p99 of a phase's runs, every run's p99 beside it."""
    timed = [r for r in runs if r.get("p99_ms") is not None]
    best = dict(min(timed, key=lambda r: r["p99_ms"]) if timed else runs[-1])
    best["runs_p99_ms"] = [r.get("p99_ms") for r in runs]
    return best


@contextlib.contextmanager
def _stopped_at_exit(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``proc``, stopped when the block ends (however it ends)."""
    try:
        yield proc
    finally:
        _stop(proc)


def _challenger_copy(model_dir: str, out: Path) -> Path:
    """The model under another version name, verified like any artifact (a challenger as dear as the champion)."""
    import shutil

    from stream.scoring.artifact import read_artifact, write_artifact

    manifest, files = read_artifact(model_dir)
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    manifest["model_version"] = f"{manifest['model_version']}-challenger"
    if out.exists():
        shutil.rmtree(out)
    write_artifact(out, files, manifest)
    return out


def _core_plain(client, s: Settings, topic: str, n: int) -> dict:
    """The plain runner in this process until it has stored ``n`` events; its rate."""
    from stream.runners.plain import run_plain

    stop = asyncio.Event()
    rate_box: dict = {}

    def watch() -> None:
        rate_box.update(_wait_rate(client, s, topic, n, []))
        stop.set()

    async def plain() -> None:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        task = asyncio.create_task(run_plain(s, stop=stop))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await task

    asyncio.run(plain())
    return rate_box


def _monitored(client, s: Settings, version: str, challenger_version: str) -> dict:
    """What a phase's workers handed to Redis: rows counted in drift windows, rows scored in
    shadow, rows in the fidelity sample (proof that the monitoring ran)."""
    from stream.adapters.redis_store import RedisStore, StoreConfig

    store = RedisStore(client, StoreConfig(prefix=s.redis_prefix))
    return {"drift_rows": sum(int(h.get(b"rows", 0)) for _, h in store.drift_since(version, 0)),
            "shadow_rows": sum(int(w.get("rows", 0)) for _, w in store.shadow_since(challenger_version, 0)),
            "fidelity_sample_rows": sum(int(f[b"n"]) for _, f in client.xrange(store.samples_key))}


def _monitoring_cost(payloads: list[bytes], model_dir: str, challenger_dir: str, s: Settings) -> dict:
    """Microseconds per event of each monitoring step, timed alone on the pipeline's own
    batches (``batch_max`` rows) of these events, best of three passes."""
    from stream.core.drift import DriftCounter
    from stream.core.pipeline import Pipeline
    from stream.core.ports import Record
    from stream.core.sampling import FidelitySampler
    from stream.core.shadow import Shadow
    from stream.events.schema import MAX_EVENT_BYTES
    from stream.features.admission import admit_batch
    from stream.features.columns import EventColumns, read_values
    from stream.features.kernel import BatchFeatureEngine
    from stream.scoring.profile import load_profile
    from stream.scoring.student import load_student

    class Empty:
        def load(self, pkey, accounts):
            return {}

        def offset(self, pkey):
            return -1

    student, challenger = load_student(model_dir), load_student(challenger_dir)
    profile = load_profile(model_dir)
    pipe = Pipeline(student, Empty())
    batches = []
    t0 = time.perf_counter()
    for i in range(0, len(payloads), s.batch_max):
        recs = [Record("bench", 0, i + j, p) for j, p in enumerate(payloads[i:i + s.batch_max])]
        r = pipe.process(recs)
        if r.scored:
            batches.append((r.event_ids, r.features, r.score_array, len(r.alerts)))
    pipeline_s = time.perf_counter() - t0
    rows = sum(len(b[0]) for b in batches)

    def best(step) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return round(min(times) / rows * 1e6, 3)

    def drift():
        c = DriftCounter(profile, student.version, 60.0)
        for _, X, p, a in batches:
            c.add(X, p, a)

    def sample():
        f = FidelitySampler(s.fidelity_sample_rate or 0.01, student.version)
        for ids, X, p, _ in batches:
            f.add(ids, X, p)

    def shadow():
        sh = Shadow(challenger, student.version, 60.0)
        for ids, X, p, _ in batches:
            sh.observe(ids, X, p, student.threshold)

    values = [payloads[i:i + s.batch_max] for i in range(0, len(payloads), s.batch_max)]

    def read(v: list[bytes]) -> EventColumns:
        return read_values(v, MAX_EVENT_BYTES)[0]

    columns = [read(v) for v in values]

    def parse():
        for v in values:
            read(v)

    def features():
        engine = BatchFeatureEngine()
        for c in columns:
            admit_batch(engine, c)

    def score():
        for _, X, _, _ in batches:
            student.score(X)

    return {"events": rows, "batch_rows": s.batch_max, "us_per_event": {
        "pipeline_parse_features_score": round(pipeline_s / rows * 1e6, 3),
        "drift": best(drift), "fidelity_sample": best(sample), "shadow_challenger": best(shadow)},
        "pipeline_steps_us_per_event": {"parse": best(parse), "features": best(features), "score": best(score)}}


def _latency(s: Settings, client, topic: str, payloads: list[bytes], keys: list, rate: float,
             seconds: float, tag: str) -> dict:
    """Offer events at ``rate``; time produce -> alert pub/sub message for every alert.
    ``tag`` makes the event ids new to every phase (a repeated id is a duplicate, not an alert)."""
    count = min(len(payloads), int(rate * seconds))
    # Fresh event ids and current times, so these are new events for the caught-up worker.
    now_ms = int(time.time() * 1000)
    base_ts = None
    fresh = []
    for i, p in enumerate(payloads[:count]):
        d = orjson.loads(p)
        if base_ts is None:
            base_ts = d.get("ts", now_ms) if isinstance(d.get("ts"), int) else now_ms
        d["event_id"] = f"lat-{tag}-{i}-{d.get('event_id')}"
        if isinstance(d.get("ts"), int):
            d["ts"] = now_ms + (d["ts"] - base_ts)  # same history, shifted to after the catch-up
        fresh.append(orjson.dumps(d))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{s.redis_prefix}:alerts:live")
    index = {orjson.loads(p)["event_id"]: i for i, p in enumerate(fresh)}
    sent_at: dict[int, float] = {}
    latencies: list[tuple[float, float]] = []  # (send time, latency)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.1)
            if msg and msg["type"] == "message":
                t = time.perf_counter()
                i = index.get(orjson.loads(msg["data"])["event_id"])
                if i in sent_at:
                    latencies.append((sent_at[i], t - sent_at[i]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    offered = _paced_send(s, topic, fresh, keys, rate, sent_at)
    time.sleep(2.0)
    stop.set()
    listener.join(2)
    pubsub.close()
    return {"offered_events_per_s": round(offered), "events": count, "alerts_timed": len(latencies),
            **_percentiles_ms(latencies)}


def _caught_up_latency(client, s: Settings, runner: str, payloads: list[bytes], keys: list, rate: float,
                       seconds: float, log_path: Path) -> dict:
    """``_latency`` on a fresh ``runner`` worker (``faust`` or ``plain``) caught up with the
    backlog on its own topic (``s.topics[0]``, loaded here), with the worker's peak RSS."""
    from stream.adapters.kafka import ensure_topics

    ensure_topics(s)
    topic = s.topics[0]
    asyncio.run(_produce(s, topic, payloads, keys))
    with _stopped_at_exit(_start_worker(s, runner, log_path)) as worker:
        _wait_rate(client, s, topic, len(payloads), [worker])
        run = _latency(s, client, topic, payloads, keys, rate, seconds, s.group_id)
        run["peak_rss_mb"] = _peak_rss_mb(worker.pid)
    return run


# The paced sender's linger: the default of Apache Kafka's own clients since 4.0 (KIP-1030)
# and of librdkafka. With linger 0 at 2,000 events/s every record is its own produce
# request, and the embedded broker's own cost dominated the latency measured
# (docs/benchmarks.md, "Produce-to-alert latency").
PACED_LINGER_MS = 5


def _paced_send(s: Settings, topic: str, values: list[bytes], keys: list, rate: float, sent: dict) -> float:
    """Send ``values`` at ``rate`` with kafka-python (linger ``PACED_LINGER_MS``), recording
    each one's send time in ``sent[index]``; return the achieved rate."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, acks=1, linger_ms=PACED_LINGER_MS,
                             **s.kafka_client_options())
    t0 = time.perf_counter()
    for i, (value, key) in enumerate(zip(values, keys)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[i] = time.perf_counter()
        producer.send(topic, value=value, key=key)
    producer.flush()
    offered = len(values) / (time.perf_counter() - t0)
    producer.close()
    return offered


async def _transport_latency(s: Settings, payloads: list[bytes], keys: list, rate: float, seconds: float,
                             backlog: int = 0) -> dict:
    """Produce -> bare group consumer latency: what the broker and clients cost, no txwatch.
    The consumer first reads the ``backlog`` records the topic already holds, as a caught-up
    worker has (from the earliest offset: the embedded broker's latest offset can fall inside
    the last record batch, BROKER-NOTES.md)."""
    from aiokafka import AIOKafkaConsumer

    count = min(len(payloads), int(rate * seconds))
    topic = s.topics[0]
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=s.bootstrap_servers, group_id=s.group_id,
                                auto_offset_reset="earliest", fetch_max_wait_ms=s.fetch_max_wait_ms,
                                session_timeout_ms=6000, rebalance_timeout_ms=6000, **s.kafka_client_options())
    await consumer.start()
    try:
        read = 0
        deadline = time.monotonic() + 600
        while (read < backlog or not consumer.assignment()) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            read += sum(len(msgs) for msgs in batch.values())
        if read < backlog:
            raise RuntimeError(f"transport consumer read only {read} of the {backlog} records before the run")
        sent: dict[int, float] = {}
        box: dict = {}
        values = [str(i).encode().ljust(len(p), b" ") for i, p in enumerate(payloads[:count])]  # same sizes
        sender = threading.Thread(target=lambda: box.update(offered=_paced_send(s, topic, values, keys, rate, sent)))
        sender.start()
        latencies: list[tuple[float, float]] = []  # (send time, latency)
        deadline = time.monotonic() + seconds + 30
        while len(latencies) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=10, max_records=5000)
            now = time.perf_counter()
            for msgs in batch.values():
                latencies += [(sent[i], now - sent[i]) for i in (int(m.value) for m in msgs) if i in sent]
        sender.join()
    finally:
        await consumer.stop()
    return {"offered_events_per_s": round(box.get("offered", 0)), "events": count, "received": len(latencies),
            **_percentiles_ms(latencies)}


LATENCY_WINDOW_S = 5.0


def _percentiles_ms(samples: list[tuple[float, float]], window_s: float = LATENCY_WINDOW_S) -> dict:
    """p50/p95/p99/max in ms of ``(send time, latency)`` samples in seconds (empty if there
    are none), and the p99 of each ``window_s`` of send time from the first send: on the
    embedded broker latency grows with the run (its fetch slows as a partition collects
    record batches), which one overall figure would hide.

    >>> r = _percentiles_ms([(0.0, 0.010), (1.0, 0.020), (6.0, 0.030)])
    >>> r["p50_ms"], r["max_ms"], r["p99_ms_by_5s"]
    (20.0, 30.0, [19.9, 30.0])
    """
    if not samples:
        return {}
    sent = np.array([t for t, _ in samples])
    lat = np.array([x for _, x in samples]) * 1000
    window = ((sent - sent.min()) // window_s).astype(int)
    by_window = [round(float(np.percentile(lat[window == w], 99)), 2) for w in np.unique(window)]
    return {"p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "max_ms": round(float(lat.max()), 2),
            f"p99_ms_by_{window_s:g}s": by_window}
