"""simulate -> train -> distill -> evaluate through the CLI, plus every refusal it promises."""

from __future__ import annotations

import json
import shutil

import numpy as np
import orjson
import pytest

from stream.features.layout import FEATURE_SCHEMA_HASH
from stream.scoring.student import load_student
from tests.conftest import LEAF_BUDGET
from training import metrics as M
from training.dataset import TEST
from training.teacher import load_teacher
from txwatch.cli import main


def run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_student_agrees_with_teacher_on_held_out_events(models, dataset):
    student = load_student(models["student"])
    teacher = load_teacher(models["teacher"])
    X, y = dataset.part(TEST)
    rho = M.spearman(teacher.raw(X), student.raw(X))
    assert rho >= 0.9, rho
    assert student.n_leaves <= LEAF_BUDGET * teacher.n_leaves or student.family == "linear"
    # It is a detector, not a constant: it ranks positives above negatives.
    assert M.roc_auc(y, student.score(X)) > 0.9


def test_student_manifest_is_complete(models):
    m = json.loads((models["student"] / "manifest.json").read_text())
    for key in ("feature_names", "feature_schema_hash", "schema_version", "training_data", "metrics",
                "threshold", "created_at", "files", "model_version", "teacher"):
        assert key in m, key
    assert m["feature_schema_hash"] == FEATURE_SCHEMA_HASH
    assert len(m["training_data"]["sha256"]) == 64
    assert set(m["files"]) == {"student.json", "profile.json"}
    assert 0.0 < m["threshold"]["value"] < 1.0 and m["threshold"]["target"] == {"alert_rate": 0.01}
    assert set(m["metrics"]["comparison"]) == {"trees", "linear"}


def test_evaluate_cli_writes_report_and_json(models, events_file, tmp_path, capsys):
    code, out, err = run(capsys, "evaluate", "--model", models["student"], "--events", events_file,
                         "--report", tmp_path / "rep", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["period"] == "test" and result["events"] > 1000
    assert 0.0 <= result["student"]["auprc"] <= 1.0
    assert result["agreement"]["spearman"] >= 0.9
    assert {"account_takeover", "structuring"} <= set(result["student"]["per_scenario"])
    for name in ("report.md", "metrics.json", "pr_curves.png", "scatter.png", "calibration.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_tampered_student_is_refused(models, events_file, tmp_path, capsys):
    bad = tmp_path / "student"
    shutil.copytree(models["student"], bad)
    payload = orjson.loads((bad / "student.json").read_bytes())
    payload["calibration"]["b"] += 1.0
    (bad / "student.json").write_bytes(orjson.dumps(payload))
    code, _, err = run(capsys, "evaluate", "--model", bad, "--events", events_file, "--report", tmp_path / "r")
    assert code == 2
    assert "sha256 mismatch" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_model_for_another_feature_schema_is_refused(models, tmp_path):
    bad = tmp_path / "student"
    shutil.copytree(models["student"], bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["feature_schema_hash"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(m))
    from stream.errors import ArtifactError
    with pytest.raises(ArtifactError, match="feature schema"):
        load_student(bad)


@pytest.mark.parametrize("content,words", [
    (None, "no such file"),
    (b"", "file is empty"),
    (b'{"event_id": "e1", "ts": 1767571200000, "account_id": "a", "type": "deposit", "asset": "BTC", "amount": 1, "usd_value": 5}\n{"event_id": "e2", "ts": 17675',
     "line 2: not valid JSON"),
    (b'{"event_id": "e1", "ts": 1767571200000, "account_id": "a", "type": "airdrop", "asset": "BTC", "amount": 1, "usd_value": 5}\n',
     "line 1: type: unknown event type"),
])
def test_bad_event_files_fail_cleanly_and_write_nothing(tmp_path, capsys, content, words):
    path = tmp_path / "events.jsonl"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "train", "--events", path, "--out", tmp_path / "teacher")
    assert code == 2
    assert words in err and err.startswith("txwatch: error:")
    assert not (tmp_path / "teacher").exists()


def test_simulate_cli_is_deterministic(tmp_path, capsys):
    for name in ("a", "b"):
        code, _, err = run(capsys, "simulate", "--events", 5000, "--accounts", 50, "--days", 5,
                           "--seed", 4, "--out", tmp_path / f"{name}.jsonl")
        assert code == 0, err
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


# -- tabular mode -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=40_000, n_features=10, n_informative=6, weights=[0.95],
                               flip_y=0.01, random_state=3)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)])
    df["is fraud"] = y
    df["when"] = np.arange(len(df)) * 60_000 + 1_767_571_200_000
    path = tmp_path_factory.mktemp("table") / "table.csv"
    df.to_csv(path, index=False)
    return path


def test_tabular_mode_end_to_end(table, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--events", table, "--label", "is fraud", "--out", tmp_path / "t",
                       "--trees", 400, "--learning-rate", 0.1, "--early-stopping", 50)
    assert code == 0, err
    code, _, err = run(capsys, "distill", "--events", table, "--teacher", tmp_path / "t", "--out", tmp_path / "s",
                       "--leaf-budget", LEAF_BUDGET)
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", "--model", tmp_path / "s", "--events", table,
                         "--report", tmp_path / "rep", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["teacher"]["auprc"] > 0.5  # the data is learnable...
    assert result["student"]["auprc"] >= 0.9 * result["teacher"]["auprc"]  # ...and the student learned it
    assert result["agreement"]["spearman"] > 0.7
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["feature_mode"] == "table" and manifest["feature_names"][0] == "x0"
    assert "when" in manifest["feature_names"]  # without --time it is just another column


def test_tabular_time_split(table, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--events", table, "--label", "is fraud", "--time", "when",
                       "--out", tmp_path / "t", "--trees", 50)
    assert code == 0, err
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert "when" not in m["feature_names"]
    from training.dataset import TEST, TRAIN, VALID, table_dataset
    ds = table_dataset(table, "is fraud", time="when")
    assert ds.ts[ds.split == TRAIN].max() < ds.ts[ds.split == VALID].min()
    assert ds.ts[ds.split == VALID].max() < ds.ts[ds.split == TEST].min()
    assert 0.55 < np.mean(ds.split == TRAIN) < 0.65
    assert m["training_data"]["splits"]["train"]["rows"] == int(np.sum(ds.split == TRAIN))


@pytest.mark.parametrize("argv,words", [
    (["--label", "nope"], "no column 'nope'"),
    (["--label", "x0"], "must be 0/1"),
    (["--label", "is fraud", "--time", "missing"], "no column 'missing'"),
])
def test_tabular_bad_columns(table, tmp_path, capsys, argv, words):
    code, _, err = run(capsys, "train", "--events", table, *argv, "--out", tmp_path / "t")
    assert code == 2 and words in err
    assert not (tmp_path / "t").exists()
