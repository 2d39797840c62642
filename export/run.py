"""``txwatch export``: verify an exported student on held-out rows, then write it atomically.

The held-out rows are the test period of the data the student was trained on: the events
file its manifest records (or ``events``), replayed as training replays it, or the table
for a tabular student. Nothing is written unless the export passes its check:

* ``onnx``: onnxruntime's probabilities equal txwatch's within ``ONNX_TOLERANCE`` on every
  held-out row (the graph is float64 end to end; the difference is the order of additions);
* ``fixed``: the AUPRC of the integer form is at least ``1 - FIXED_MAX_AUPRC_DROP`` of the
  float student's, the reference evaluator and the vectorised one agree on every row, and
  the linear form's int64 sums cannot overflow on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import orjson

from stream.atomic import write_bytes, write_dir
from stream.errors import DataError, TxwatchError
from stream.scoring.student import Student

FORMATS = ("onnx", "fixed")
ONNX_TOLERANCE = 1e-6
FIXED_MAX_AUPRC_DROP = 0.005
ONNX_FILE_SUFFIX = ".onnx"
FIXED_FILES = ("fixed_model.json", "txwatch_student.c")


class ExportError(TxwatchError):
    """An export that failed its verification; nothing was written."""


def held_out(student: Student, events: str | None, label: str | None, time: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of the test period of the student's data (all rows if that is empty)."""
    from training.dataset import TEST
    from training.evaluate import dataset_for

    source = events or student.manifest.get("training_data", {}).get("path")
    if not source or not Path(source).is_file():
        raise DataError(f"{student.path}: the data it was trained on ({source or 'not recorded'}) is not "
                        "there; pass --events FILE to verify the export on")
    ds = dataset_for(student, source, label=label, time=time)
    mask = ds.split == TEST
    if not mask.any():
        mask = np.ones(len(ds.y), dtype=bool)
    return ds.X[mask], ds.y[mask]


def export_onnx(student: Student, X: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The verified ONNX bytes of ``student`` and the check's figures."""
    from export import onnx_model

    data = onnx_model.build(student).SerializeToString()
    ours = student.score(X)
    theirs = onnx_model.score(onnx_model.session(data), X)
    diff = float(np.max(np.abs(ours - theirs))) if len(X) else 0.0
    report = {"format": "onnx", "rows_checked": int(len(X)), "max_abs_diff": diff, "tolerance": ONNX_TOLERANCE,
              "bytes": len(data), "opsets": {"ai.onnx": onnx_model.OPSET, "ai.onnx.ml": onnx_model.ML_OPSET},
              "input": onnx_model.INPUT, "output": onnx_model.OUTPUT}
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(f"onnxruntime's scores differ from txwatch's by {diff:.3g} (> {ONNX_TOLERANCE}) "
                          "on the held-out rows; nothing written")
    return data, report


def export_fixed(student: Student, X: np.ndarray, y: np.ndarray) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The verified integer form (model JSON and C source) and the check's figures."""
    from export import fixed
    from training import metrics as M

    model = fixed.quantise(student)
    XQ = fixed.quantise_features(model, X)
    raw_q = fixed.raw_batch(model, XQ)
    sample = range(0, len(XQ), max(1, len(XQ) // 500))
    if any(fixed.raw_reference(model, XQ[i].tolist()) != raw_q[i] for i in sample):
        raise ExportError("the integer evaluators disagree; nothing written")  # a bug, not bad data
    if model.family == "linear":
        worst = max((sum(abs(w * int(x)) for w, x in zip(model.weights, row)) for row in XQ.tolist()), default=0)
        if worst >= 1 << 63:
            raise ExportError("the linear form's int64 sums would overflow on the held-out rows; nothing written")
    raw_float = student.raw(X)
    p_float = student.score(X)
    p_fixed = 1.0 / (1.0 + np.exp(-(student.cal_a * (raw_q / float(1 << fixed.SCORE_BITS)) + student.cal_b)))
    labelled = len(y) and y.min() >= 0 and y.min() != y.max()
    auprc_float = M.auprc(y, p_float) if labelled else None
    auprc_fixed = M.auprc(y, p_fixed) if labelled else None
    alerts_fixed = raw_q >= model.alert_raw
    alerts_float = p_float >= student.threshold
    report = {
        "format": "fixed", "family": model.family, "rows_checked": int(len(X)),
        "feature_rule": fixed.feature_rule(model),
        "score_rule": f"raw log-odds * 2^{fixed.SCORE_BITS}; alert when raw >= {model.alert_raw}",
        "max_raw_error": float(np.max(np.abs(raw_q / float(1 << fixed.SCORE_BITS) - raw_float))) if len(X) else 0.0,
        "max_probability_error": float(np.max(np.abs(p_fixed - p_float))) if len(X) else 0.0,
        "alert_decisions_differing": int(np.sum(alerts_fixed != alerts_float)),
        "auprc": {"float": auprc_float, "fixed": auprc_fixed},
        "recall_at_threshold": {"float": M.precision_recall_at(y, p_float, student.threshold)[1] if labelled else None,
                                "fixed": (float(alerts_fixed[y == 1].mean()) if labelled else None)},
        "max_auprc_drop": FIXED_MAX_AUPRC_DROP,
    }
    if labelled and auprc_fixed < (1.0 - FIXED_MAX_AUPRC_DROP) * auprc_float:
        raise ExportError(f"the integer form's AUPRC {auprc_fixed:.4f} is more than {FIXED_MAX_AUPRC_DROP:.1%} below "
                          f"the float student's {auprc_float:.4f}; nothing written")
    source = fixed.c_source(model).encode()
    files = {"fixed_model.json": orjson.dumps(model.to_dict(), option=orjson.OPT_INDENT_2),
             "txwatch_student.c": source}
    report["c_source_bytes"] = len(source)
    report["operations_per_event"] = fixed.operations(model, XQ)
    return files, report


def export(model_dir: str, fmt: str, out: str, *, events: str | None = None, label: str | None = None,
           time: str | None = None, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Export the student at ``model_dir`` as ``fmt`` to ``out``; return the verification report."""
    from training.evaluate import load_any_student

    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    student = load_any_student(model_dir)
    log("scoring the held-out rows")
    X, y = held_out(student, events, label, time)
    target = Path(out)
    if fmt == "onnx":
        data, report = export_onnx(student, X)
        write_bytes(target, data)
    else:
        files, report = export_fixed(student, X, y)
        write_dir(target, files)  # refuses a path that is a file
    report.update(model_version=student.version, out=str(target))
    if report.get("auprc", {}).get("float") is not None:
        report["auprc_ratio"] = report["auprc"]["fixed"] / report["auprc"]["float"]
    for key, value in list(report.items()):
        if isinstance(value, float) and not math.isfinite(value):
            report[key] = None
    return report
