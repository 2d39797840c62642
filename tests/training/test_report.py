"""Tests of training.report: files, PNG validity, Markdown content, atomicity."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from training import metrics as M
from training import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("pr_curves.png", "scatter.png", "calibration.png")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(5)
    n = 3_000
    y = (rng.random(n) < 0.05).astype(int)
    z = rng.normal(size=n) + 2.5 * y
    teacher = 1 / (1 + np.exp(-(2 * z - 5)))
    student = 1 / (1 + np.exp(-(2 * (z + rng.normal(scale=0.4, size=n)) - 5)))
    scenarios = np.where(y == 1, rng.choice(["wash_trading", "layering"], n), None)
    t = M.threshold_for_alert_rate(teacher, 0.05)
    metrics = {
        "threshold": t,
        "teacher": M.summarize(y, teacher, t, scenarios),
        "student": M.summarize(y, student, t, scenarios),
        "agreement": {
            "spearman": M.spearman(teacher, student),
            "top1pct_overlap": M.top_fraction_overlap(teacher, student),
        },
        "sizes": {
            "teacher": {"trees": 800, "leaves": 51200, "bytes": 12345678},
            "student": {"trees": 60, "leaves": 960, "bytes": 81234},
        },
        "notes": {"undefined": float("nan"), "model": "lgbm|v2"},
    }
    return y, teacher, student, metrics


@pytest.fixture(scope="module")
def written(tmp_path_factory, data):
    y, teacher, student, metrics = data
    out = tmp_path_factory.mktemp("r") / "nested" / "report"
    path = R.write_report(out, metrics=metrics, y=y, teacher_p=teacher, student_p=student,
                          title="Run 42 evaluation")
    return out, path


def test_files_created(written):
    out, path = written
    assert path == out / "report.md"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["report.md", "metrics.json", *PLOTS])  # no temp files left


@pytest.mark.parametrize("name", PLOTS)
def test_pngs_are_valid_and_non_trivial(written, name):
    data = (written[0] / name).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 15_000
    # IHDR width/height: a real figure, not a 1x1 placeholder.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 500 and height >= 500


def test_report_md_embeds_plots_and_title(written):
    text = written[1].read_text()
    assert text.startswith("# Run 42 evaluation\n")
    for name in PLOTS:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", text), name
    assert "[metrics.json](metrics.json)" in text


def _row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r}")


def test_report_md_shows_metric_values(written, data):
    _, _, _, metrics = data
    text = written[1].read_text()
    header = _row(text, "")  # first comparison table: teacher vs student
    assert header[1:] == ["teacher", "student"]
    for key in ("auprc", "roc_auc", "precision", "recall", "ece"):
        row = _row(text, key)
        assert row[1] == f"{metrics['teacher'][key]:.4f}"
        assert row[2] == f"{metrics['student'][key]:.4f}"
    assert _row(text, "events")[1:3] == ["3000", "3000"]
    assert _row(text, "threshold")[1] == f"{metrics['threshold']:.4f}"
    assert _row(text, "spearman")[1] == f"{metrics['agreement']['spearman']:.4f}"
    assert _row(text, "bytes")[1:] == ["12345678", "81234"]
    assert _row(text, "undefined")[1] == "n/a"
    assert "| model | lgbm\\|v2 |" in text  # pipe escaped inside a table


def test_report_md_per_scenario_table(written, data):
    _, _, _, metrics = data
    text = written[1].read_text()
    assert "| events | recall (teacher) | recall (student) |" in text
    for name in ("layering", "wash_trading"):
        t, s = metrics["teacher"]["per_scenario"][name], metrics["student"]["per_scenario"][name]
        assert _row(text, name)[1:] == [str(t["events"]), f"{t['recall']:.4f}",
                                        f"{s['recall']:.4f}"]


def test_metrics_json_roundtrip_nan_to_null(written, data):
    _, _, _, metrics = data
    raw = (written[0] / "metrics.json").read_text()
    assert "NaN" not in raw and "\n  " in raw  # strict JSON, pretty-printed
    loaded = json.loads(raw)
    assert loaded["notes"]["undefined"] is None
    assert loaded["teacher"] == metrics["teacher"]
    assert loaded["sizes"] == metrics["sizes"]
    assert loaded["threshold"] == metrics["threshold"]


def test_numpy_values_serialised(tmp_path):
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.3, 0.6])
    metrics = {"a": np.float32(0.5), "b": np.int64(7), "c": np.array([1, 2]),
               "d": np.float64("inf")}
    R.write_report(tmp_path, metrics=metrics, y=y, teacher_p=p, student_p=p[::-1])
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "a": 0.5, "b": 7, "c": [1, 2], "d": None}


def test_flat_matrix_orientation(tmp_path):
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.3, 0.6])
    # Three scenarios x two inner keys: scenarios become rows.
    metrics = {"per_scenario": {"s1": {"events": 1, "recall": 0.5},
                                "s2": {"events": 2, "recall": 1.0},
                                "s3": {"events": 3, "recall": 0.25}}}
    text = R.write_report(tmp_path, metrics=metrics, y=y, teacher_p=p, student_p=p).read_text()
    assert "|  | events | recall |" in text
    assert _row(text, "s3")[1:] == ["3", "0.2500"]


def test_failure_leaves_no_report(tmp_path, data, monkeypatch):
    y, teacher, student, metrics = data
    out = tmp_path / "out"
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        R.write_report(out, metrics={**metrics, "bad": object()}, y=y,
                       teacher_p=teacher, student_p=student)
    assert not (out / "report.md").exists()

    # A previous report survives a failing rewrite untouched, and no temp files remain.
    R.write_report(out, metrics=metrics, y=y, teacher_p=teacher, student_p=student)
    before = (out / "report.md").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(R, "_calibration_figure", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        R.write_report(out, metrics={"other": 1.0}, y=y, teacher_p=teacher, student_p=student)
    assert (out / "report.md").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        R.write_report(tmp_path, metrics={}, y=[0, 1], teacher_p=[0.1, 0.2], student_p=[0.1])
    with pytest.raises(ValueError, match="binary"):
        R.write_report(tmp_path, metrics={}, y=[0, 3], teacher_p=[0.1, 0.2],
                       student_p=[0.1, 0.2])
    with pytest.raises(TypeError, match="dict"):
        R.write_report(tmp_path, metrics=[1, 2], y=[0, 1], teacher_p=[0.1, 0.2],
                       student_p=[0.1, 0.2])
    assert not (tmp_path / "report.md").exists()


def test_subsample_caps_points_and_keeps_positives():
    y = np.zeros(120_000, dtype=np.int8)
    y[::1000] = 1  # 120 positives
    idx = R._subsample(y, R.MAX_SCATTER_POINTS)
    assert idx.size == R.MAX_SCATTER_POINTS
    assert np.unique(idx).size == idx.size
    assert int(y[idx].sum()) == 120
    np.testing.assert_array_equal(R._subsample(y[:100], R.MAX_SCATTER_POINTS), np.arange(100))


def test_non_probability_scores_still_plot(tmp_path):
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.2).astype(int)
    t = rng.normal(size=500) + 2 * y  # raw margins, not probabilities
    R.write_report(tmp_path, metrics={"threshold": 1.0}, y=y, teacher_p=t, student_p=t * 0.8)
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_operating_points_from_summaries_else_threshold():
    y = np.array([1, 0, 1, 0])
    t = np.array([0.9, 0.8, 0.3, 0.1])
    s = np.array([0.9, 0.2, 0.7, 0.1])
    scores = {"teacher": t, "student": s}
    # The teacher's summary (taken at its own threshold) wins over metrics["threshold"].
    pts = R._operating_points({"threshold": 0.5, "teacher": {"precision": 0.25, "recall": 0.75}},
                              y, scores)
    assert pts == {"teacher": (0.25, 0.75), "student": (1.0, 1.0)}
    pts = R._operating_points({"threshold": {"teacher": 0.85}}, y, scores)
    assert pts == {"teacher": (1.0, 0.5)}
    assert R._operating_points({}, y, scores) == {}


def test_mixed_sections_and_recall_matrix(tmp_path):
    # Shapes as training.evaluate builds them: scalars beside model dicts, and a
    # scenario -> recall map per model.
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.3, 0.6])
    metrics = {
        "sizes": {"teacher": {"trees": 800, "leaves": 51200},
                  "student": {"trees": 60, "leaves": 960},
                  "student_leaf_fraction": 0.02},
        "per_scenario_recall": {"teacher": {"a": 1.0, "b": 0.5, "c": 0.0},
                                "student": {"a": 0.75, "b": 0.5, "c": 0.25}},
    }
    text = R.write_report(tmp_path, metrics=metrics, y=y, teacher_p=p, student_p=p).read_text()
    assert "| student_leaf_fraction | 0.0200 |" in text
    assert _row(text, "leaves")[1:] == ["51200", "960"]
    assert _row(text, "c")[1:] == ["0.0000", "0.2500"]   # scenarios are rows, models columns
    assert _row(text, "a")[1:] == ["1.0000", "0.7500"]
