"""Wiring shared by the runners: the core assembled on its real adapters, and the GC set-up."""

from __future__ import annotations

import gc

from stream.adapters.model_watcher import ModelWatcher
from stream.adapters.redis_store import redis_client, redis_store
from stream.core.ports import Publish
from stream.core.worker import WorkerCore
from stream.errors import ArtifactError, TxwatchError
from stream.features.kernel import ensure_compiled
from stream.metrics import WorkerMetrics
from stream.scoring import profile, treekernels
from stream.settings import Settings

GC_THRESHOLDS = (100_000, 50, 1000)


def tune_gc() -> None:
    """Garbage collection for a long-running batch worker.

    Every batch allocates tens of thousands of short-lived container objects (Kafka
    records, decoded events, feature columns); with CPython's default thresholds
    (700, 10, 10) that triggers a collection every few hundred events, and the older
    generations are rescanned often, each time walking every object of the worker
    (libraries, model, caches). Objects alive at start-up are moved out of the collector's
    view (``gc.freeze``) and collections run every 100,000 allocations instead (the
    effect on the core's rate is measured in ``docs/benchmarks.md``). Reference cycles
    are still collected, just less often.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_core(settings: Settings, publish: Publish, metrics: WorkerMetrics | None = None) -> WorkerCore:
    """Connect to Redis, load and verify the model, and assemble the core."""
    metrics = metrics or WorkerMetrics()
    client = redis_client(settings)
    watcher = ModelWatcher(settings, client, metrics)
    try:
        student = watcher.load_initial()
    except ArtifactError as exc:
        raise TxwatchError(f"cannot serve: {exc}") from None
    store = redis_store(settings, client)
    ensure_compiled()  # load (or, on a fresh install, compile) the feature kernels before consuming
    treekernels.warm()  # and the scoring kernels, and drift's counting one
    profile.warm()
    core = WorkerCore(settings, store, student, publish, metrics, watcher, monitor=store)
    tune_gc()
    return core
