"""``txwatch bench models``: teacher vs student speed, size and quality, as one JSON object.

Single-event latency is the time of one call scoring one feature row, as the stream would
for a lone event: the student through its generated single-row code, the teacher through
``Booster.predict`` on a one-row array. Batch throughput scores batches of 1,000 rows.
The teacher runs with LightGBM's default threads (all cores); the student on one thread.
The feature-engine figures time the file read (parse and validate), the replay training
runs (admission and the compiled kernel, in file order) and the pure-Python reference.
``stress`` is the recall of both models on attack variants outside the training ranges
(:mod:`training.stress`), as ``txwatch evaluate --stress`` reports it.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import numpy as np

from stream.events.files import read_events
from stream.features.reference import FeatureEngine
from training import metrics as M
from training.dataset import TEST, build_features
from training.evaluate import dataset_for, load_pair
from training.stress import stress_recall

BATCH = 1_000


def _latency_us(fn: Callable[[Any], Any], rows: list, calls: int) -> dict[str, float]:
    timer = time.perf_counter_ns
    samples = np.empty(calls)
    n = len(rows)
    for i in range(calls):
        row = rows[i % n]
        t0 = timer()
        fn(row)
        samples[i] = timer() - t0
    return {"median": round(float(np.median(samples)) / 1e3, 2),
            "p99": round(float(np.percentile(samples, 99)) / 1e3, 2), "calls": calls}


def _throughput(fn: Callable[[np.ndarray], Any], X: np.ndarray, min_seconds: float = 1.0) -> float:
    batches = [X[i:i + BATCH] for i in range(0, len(X) - BATCH + 1, BATCH)] or [X]
    rows = 0
    t0 = time.perf_counter()
    while True:
        for b in batches:
            fn(b)
            rows += len(b)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return rows / elapsed


def bench_models(events: str, model_dir: str, *, teacher_dir: str | None = None, calls: int = 10_000,
                 stress_seed: int = 0, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure both models on the test period of ``events``; return the JSON-ready result."""
    student, teacher = load_pair(model_dir, teacher_dir)
    log("loading data")
    ds = dataset_for(student, events, label=None, time=None)
    mask = ds.split == TEST
    X, y = ds.X[mask], ds.y[mask]
    if len(X) < BATCH:
        X, y = ds.X, ds.y
    rows_np = [X[i:i + 1] for i in range(min(len(X), calls))]
    rows_py = [r[0].tolist() for r in rows_np]
    predict = teacher.booster.predict

    log("single-event latency")
    student_single = _latency_us(student.score_one, rows_py, calls)
    teacher_single = _latency_us(predict, rows_np, calls)
    log("batch throughput")
    student_batch = _throughput(student.score, X)
    teacher_batch = _throughput(predict, X)

    # The single-row path must agree with the batch path (same model, two evaluators).
    check = np.array([student.score_one(r) for r in rows_py[:1000]])
    max_diff = float(np.max(np.abs(check - student.score(X[:len(check)]))))

    p_s, p_t = student.score(X), teacher.score(X)
    rate = float(np.mean(p_s >= student.threshold))
    t_thr = M.threshold_for_alert_rate(p_t, rate) if rate > 0 else float(p_t.max()) + 1

    result: dict[str, Any] = {
        "benchmark": "models",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "processor": platform.machine()},
        "data": {"source": events, "rows_scored": int(len(X)), "positives": int(y.sum())},
        "teacher": {
            "trees": teacher.n_trees, "leaves": teacher.n_leaves,
            "bytes": teacher.manifest["size"]["bytes"],
            "single_event_us": teacher_single, "batch_rows_per_s": round(teacher_batch),
            "auprc": M.auprc(y, p_t), "recall_at_student_alert_rate": M.precision_recall_at(y, p_t, t_thr)[1],
        },
        "student": {
            "family": student.family, "trees": student.n_trees, "leaves": student.n_leaves,
            "bytes": student.manifest["size"]["bytes"],
            "single_event_us": student_single, "batch_rows_per_s": round(student_batch),
            "auprc": M.auprc(y, p_s), "recall_at_threshold": M.precision_recall_at(y, p_s, student.threshold)[1],
            "alert_rate": rate, "single_vs_batch_max_abs_diff": max_diff,
        },
    }
    t, s = result["teacher"], result["student"]
    result["ratios"] = {
        "auprc_student_over_teacher": s["auprc"] / t["auprc"] if t["auprc"] else None,
        "recall_student_over_teacher_same_alert_rate":
            s["recall_at_threshold"] / t["recall_at_student_alert_rate"] if t["recall_at_student_alert_rate"] else None,
        "leaves_student_over_teacher": s["leaves"] / t["leaves"] if t["leaves"] else None,
        "batch_speedup": s["batch_rows_per_s"] / t["batch_rows_per_s"],
        "single_event_speedup": t["single_event_us"]["median"] / s["single_event_us"]["median"],
    }
    if ds.mode == "events":
        log("feature-engine replay rate")
        t0 = time.perf_counter()
        evs = read_events(events)
        parse_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_features(evs)  # what training runs: the stream's admission and compiled kernel
        replay_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        FeatureEngine().replay(evs)  # the pure-Python reference engine (the specification)
        reference_s = time.perf_counter() - t0
        result["feature_engine"] = {"events": len(evs), "replay_events_per_s": round(len(evs) / replay_s),
                                    "reference_replay_events_per_s": round(len(evs) / reference_s),
                                    "parse_events_per_s": round(len(evs) / parse_s)}
        log("stress variants")
        # Attacks outside the training ranges, on real accounts (training.stress), at the
        # student's stored threshold and the teacher's at the same alert rate.
        result["stress"] = stress_recall({"student": (student.score, student.threshold),
                                          "teacher": (teacher.score, t_thr)},
                                         [e.to_dict() for e in evs], stress_seed)
    return result
