"""``txwatch bench export``: the exported student's cost against txwatch's own kernels, as one JSON object.

On the held-out rows of the student's data (as ``txwatch export`` verifies on): single-event
latency and batch throughput of onnxruntime (one thread) against txwatch's compiled
kernels (``score_one`` and ``score``), and the integer-only evaluator's cost per event:
its operations (comparisons and additions), the size of the generated C, and, where a C
compiler is on the machine, the compiled evaluator's own time per event.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from txwatch.bench.models import BATCH, _latency_us, _throughput

C_DRIVER = r"""
#include <stdint.h>
#include <stdio.h>
#include <time.h>
int64_t txwatch_raw(const int64_t *x);
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb");
    long rows = 0, n = 0;
    if (!f || fread(&rows, sizeof rows, 1, f) != 1 || fread(&n, sizeof n, 1, f) != 1) return 2;
    static int64_t x[1 << 22];
    if (rows * n > (1 << 22) || fread(x, sizeof(int64_t), rows * n, f) != (size_t)(rows * n)) return 2;
    struct timespec t0, t1;
    int64_t check = 0;
    int reps = 20;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++)
        for (long i = 0; i < rows; i++) check += txwatch_raw(x + i * n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / ((double)rows * reps);
    printf("%.1f %lld\n", ns, (long long)check);
    return 0;
}
"""


def _c_timing(source: str, XQ: np.ndarray) -> dict[str, Any] | None:
    """The generated evaluator compiled with ``-O2 -mgeneral-regs-only``: ns per event."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "model.c").write_text(source)
        (d / "driver.c").write_text(C_DRIVER)
        subprocess.run([cc, "-O2", "-std=c99", "-mgeneral-regs-only", "-c", "model.c", "-o", "model.o"],
                       cwd=d, check=True, capture_output=True)
        subprocess.run([cc, "-O2", "driver.c", "model.o", "-o", "bench"], cwd=d, check=True, capture_output=True)
        rows = XQ[: (1 << 22) // XQ.shape[1]]
        with open(d / "x.bin", "wb") as f:
            f.write(np.array([len(rows), rows.shape[1]], dtype=np.int64).tobytes())
            f.write(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
        out = subprocess.run([str(d / "bench"), str(d / "x.bin")], check=True, capture_output=True, text=True).stdout
        size = subprocess.run(["size", "model.o"], cwd=d, capture_output=True, text=True).stdout.split()
        text_data = int(size[6]) + int(size[7]) if len(size) >= 8 else None
        return {"compiler": Path(cc).name, "flags": "-O2 -mgeneral-regs-only", "ns_per_event": float(out.split()[0]),
                "object_text_and_data_bytes": text_data}


def bench_export(model_dir: str, *, events: str | None = None, calls: int = 10_000,
                 log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure both exported forms against txwatch's kernels; return the JSON-ready result."""
    from export import fixed, onnx_model
    from export.run import export_fixed, export_onnx, held_out
    from training.evaluate import load_any_student

    student = load_any_student(model_dir)
    log("scoring the held-out rows")
    X, y = held_out(student, events, None, None)
    data, onnx_report = export_onnx(student, X)
    sess = onnx_model.session(data)
    rows_np = [X[i:i + 1] for i in range(min(len(X), calls))]
    rows_py = [r[0].tolist() for r in rows_np]
    log("single-event latency")
    ort_single = _latency_us(lambda r: onnx_model.score(sess, r), rows_np, calls)
    ours_single = _latency_us(student.score_one, rows_py, calls)
    log("batch throughput")
    ort_batch = _throughput(lambda b: onnx_model.score(sess, b), X)
    ours_batch = _throughput(student.score, X)
    log("integer form")
    files, fixed_report = export_fixed(student, X, y)
    model = fixed.quantise(student)
    XQ = fixed.quantise_features(model, X)
    t0 = time.perf_counter()
    n_ref = min(len(XQ), 2000)
    for row in XQ[:n_ref].tolist():
        fixed.raw_reference(model, row)
    ref_us = (time.perf_counter() - t0) / max(n_ref, 1) * 1e6
    return {
        "benchmark": "export",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine()},
        "model": student.version, "family": student.family, "rows": int(len(X)), "batch_rows": BATCH,
        "onnx": {"bytes": onnx_report["bytes"], "max_abs_diff": onnx_report["max_abs_diff"],
                 "single_event_us": ort_single, "batch_rows_per_s": round(ort_batch), "threads": 1},
        "txwatch": {"single_event_us": ours_single, "batch_rows_per_s": round(ours_batch),
                    "batch_threads": "numba default (all cores)"},
        "fixed": {**{k: fixed_report[k] for k in ("operations_per_event", "c_source_bytes", "max_probability_error",
                                                    "alert_decisions_differing", "auprc", "recall_at_threshold")},
                  "python_reference_us_per_event": round(ref_us, 1), "compiled_c": _c_timing(
                      files["txwatch_student.c"].decode(), XQ)},
    }
