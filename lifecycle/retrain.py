"""``txwatch retrain``: a new teacher and student from history plus reviewers' labels, installed as challenger.

One command for the loop the workbench closes: reviewers' dispositions (``txwatch labels
export``, a labels file: :mod:`stream.events.labels`) override the history's own labels by
event id; a teacher is trained and a student distilled on that, evaluated against its
teacher on the latest days, and named the **shadow challenger** (:mod:`lifecycle.shadow`),
never the served model: it runs beside the champion on live traffic until ``txwatch
promote`` judges it, shadow figures included.

Steps, each logged: labels -> dataset; teacher (``OUT/teacher``); student (``OUT/student``);
evaluation (``OUT/evaluation``, the usual report); challenger. The artifacts are written in
full before the challenger is set; a failure at any step leaves the served model and the
current challenger as they were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from stream.errors import TxwatchError


def retrain(events: str | os.PathLike, labels: str | os.PathLike, out: str | os.PathLike, *, served_dir: str,
            teacher_params: dict[str, Any], leaf_budget: float, seed: int = 0,
            install: Callable[[str], dict[str, Any]] | None = None, log: Callable[[str], None] = print,
            progress: bool = False) -> dict[str, Any]:
    """Train, distil, evaluate; then ``install(student_dir)`` (the challenger setter) if given.
    Returns what was done: the artifacts, the label counts, the evaluation and the challenger record."""
    from training.dataset import load_dataset
    from training.distill import distill
    from training.evaluate import evaluate, load_pair, write
    from training.teacher import load_teacher, train_teacher

    out = Path(out).absolute()
    teacher_dir, student_dir = out / "teacher", out / "student"
    if os.path.realpath(student_dir) == os.path.realpath(served_dir):
        raise TxwatchError(f"{student_dir} is the served model: retrain writes a challenger, never over the champion")
    log(f"reading {events} with reviewers' labels from {labels}")
    ds = load_dataset(events, seed=seed, labels=str(labels), progress=progress)
    counts = ds.meta.get("reviewer_labels", {})
    log(f"reviewers' labels: {counts}")
    log(f"training the teacher -> {teacher_dir}")
    tm = train_teacher(ds, teacher_dir, seed=seed, progress=progress, **teacher_params)
    teacher = load_teacher(teacher_dir)
    log(f"distilling the student -> {student_dir}")
    sm = distill(ds, teacher, student_dir, leaf_budget=leaf_budget, seed=seed, log=log)
    student, teacher = load_pair(str(student_dir), str(teacher_dir))
    result = evaluate(student, teacher, ds, period="test")
    report = write(result, out / "evaluation")
    metrics = {k: v for k, v in result.items() if k != "_arrays"}
    log(f"test period: AUPRC student {metrics['student']['auprc']:.4f} / teacher {metrics['teacher']['auprc']:.4f}; "
        f"report {report}")
    summary: dict[str, Any] = {
        "teacher": {"dir": str(teacher_dir), "version": tm.get("model_version")},
        "student": {"dir": str(student_dir), "version": sm.get("model_version")},
        "reviewer_labels": counts, "evaluation": {"report": str(report), "period": metrics["period"],
                                                  "events": metrics["events"], "positives": metrics["positives"],
                                                  "student": metrics["student"],
                                                  "teacher": metrics["teacher"], "threshold": metrics["threshold"]},
        "challenger": None,
    }
    if install is not None:
        summary["challenger"] = install(str(student_dir))
        log(f"installed as shadow challenger: {summary['student']['version']} (promote it with txwatch promote once "
            "its shadow run and fidelity hold)")
    return summary
