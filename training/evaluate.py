"""``txwatch evaluate``: a student (and its teacher) on held-out data, as JSON and a report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stream.errors import ArtifactError, DataError
from stream.features.layout import FEATURE_SCHEMA_HASH
from stream.scoring.student import Student, load_student
from training import metrics as M
from training.dataset import SPLIT_NAMES, Dataset, load_dataset
from training.teacher import Teacher, load_teacher


def load_pair(model_dir: str | os.PathLike, teacher_dir: str | os.PathLike | None = None) -> tuple[Student, Teacher]:
    """The student at ``model_dir`` and its teacher (recorded path unless given), both verified."""
    student = load_any_student(model_dir)
    tdir = teacher_dir or student.manifest.get("teacher", {}).get("path")
    if not tdir:
        raise ArtifactError(f"{model_dir}: no teacher recorded; pass --teacher DIR")
    teacher = load_teacher(tdir, feature_schema_hash=student.manifest["feature_schema_hash"])
    recorded = student.manifest.get("teacher", {}).get("sha256")
    if recorded and teacher.manifest["files"].get("teacher.txt") != recorded:
        raise ArtifactError(f"{tdir}: this is not the teacher {model_dir} was distilled from")
    return student, teacher


def load_any_student(model_dir: str | os.PathLike) -> Student:
    """Event-mode students are checked against this code's feature schema; table ones by names."""
    from stream.scoring.artifact import read_artifact

    manifest, _ = read_artifact(model_dir, kind="student")
    if manifest.get("feature_mode") == "table":
        return load_student(model_dir, feature_schema_hash=manifest["feature_schema_hash"])
    return load_student(model_dir, feature_schema_hash=FEATURE_SCHEMA_HASH)


def dataset_for(student: Student, events: str, *, label: str | None, time: str | None,
                progress: bool = False) -> Dataset:
    """Load data the way the student's features were made (events, or a table)."""
    if student.manifest.get("feature_mode") == "table":
        label = label or student.manifest["training_data"].get("table", {}).get("label")
        if not label:
            raise DataError("this is a tabular model: pass --label COL")
        return load_dataset(events, label=label, time=time, feature_names=student.feature_names)
    if label is not None:
        raise DataError("this model scores exchange events; --label is for tabular models")
    return load_dataset(events, progress=progress)


def evaluate(student: Student, teacher: Teacher, ds: Dataset, *, period: str = "test") -> dict[str, Any]:
    """All evaluation metrics of student and teacher on one period (or ``all``)."""
    if period == "all":
        mask = np.ones(len(ds.y), dtype=bool)
    elif period in SPLIT_NAMES:
        mask = ds.split == SPLIT_NAMES[period]
    else:
        raise DataError(f"--period must be one of all, {', '.join(SPLIT_NAMES)}")
    if not ds.labelled:
        raise DataError(f"{ds.source}: evaluation needs labelled rows")
    X, y = ds.X[mask], ds.y[mask]
    if len(y) == 0 or y.min() == y.max():
        raise DataError(f"{ds.source}: the {period} period needs both labels to evaluate")
    scen = ds.scenario[mask] if ds.scenario is not None else None
    thr = student.threshold
    p_s, p_t = student.score(X), teacher.score(X)
    raw_s, raw_t = student.raw(X), teacher.raw(X)
    alert_rate = float(np.mean(p_s >= thr))
    # The teacher is judged at the same alert rate as the student's threshold gives.
    t_thr = M.threshold_for_alert_rate(p_t, alert_rate) if alert_rate > 0 else float(p_t.max()) + 1
    teacher_size = teacher.manifest["size"]
    result = {
        "source": ds.source, "period": period, "events": int(len(y)), "positives": int(y.sum()),
        "threshold": thr, "teacher_threshold_same_alert_rate": float(t_thr),
        "model_version": student.version, "family": student.family,
        "student": M.summarize(y, p_s, thr, scen),
        "teacher": M.summarize(y, p_t, t_thr, scen),
        "agreement": {"spearman": M.spearman(raw_t, raw_s),
                      "top1pct_overlap": M.top_fraction_overlap(raw_t, raw_s, 0.01)},
        "recall_ratio_at_same_alert_rate": None,
        "auprc_ratio": None,
        "sizes": {"teacher": teacher_size, "student": student.manifest["size"]},
    }
    if "dropped" in ds.meta:  # events the stream would not apply (duplicates, too late): not scored
        result["dropped"] = ds.meta["dropped"]
    s, t = result["student"], result["teacher"]
    if t["auprc"]:
        result["auprc_ratio"] = s["auprc"] / t["auprc"]
    if t["recall"]:
        result["recall_ratio_at_same_alert_rate"] = s["recall"] / t["recall"]
    leaves_t = teacher_size.get("leaves") or 0
    if leaves_t:
        result["sizes"]["student_leaf_fraction"] = student.n_leaves / leaves_t
    result["_arrays"] = {"y": y, "teacher_p": p_t, "student_p": p_s}
    return result


def evaluate_stress(student: Student, teacher: Teacher, result: dict[str, Any], events: str | os.PathLike, *,
                    seed: int = 0, per_family: int | None = None) -> dict[str, Any]:
    """Recall per stress-variant family (:mod:`training.stress`) at the thresholds of ``result``:
    the student's stored one, the teacher's at the same alert rate. Adds ``result["stress"]``."""
    from stream.events.files import read_events
    from training.stress import DEFAULT_PER_FAMILY, stress_recall

    if student.manifest.get("feature_mode") == "table":
        raise DataError("stress variants are exchange events; this is a tabular model")
    history = [e.to_dict() for e in read_events(events)]
    models = {"student": (student.score, result["threshold"]),
              "teacher": (teacher.score, result["teacher_threshold_same_alert_rate"])}
    result["stress"] = stress_recall(models, history, seed, per_family=per_family or DEFAULT_PER_FAMILY)
    return result["stress"]


def write(result: dict[str, Any], report_dir: str | os.PathLike) -> Path:
    """The Markdown report with plots (see :mod:`training.report`)."""
    from training.report import write_report

    arrays = result["_arrays"]
    metrics = {k: v for k, v in result.items() if k != "_arrays"}
    per = {}
    for who in ("teacher", "student"):
        if "per_scenario" in metrics[who]:
            per[who] = {k: v["recall"] for k, v in metrics[who]["per_scenario"].items()}
    if per:
        metrics["per_scenario_recall"] = per
    return write_report(report_dir, metrics=metrics, y=arrays["y"], teacher_p=arrays["teacher_p"],
                        student_p=arrays["student_p"], title=f"txwatch evaluation: {metrics['model_version']}")
