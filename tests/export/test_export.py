"""txwatch export: the ONNX graph and the integer form equal the student where they must,
and every refusal is one line with nothing written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from export import fixed, onnx_model
from export.run import ExportError, export, held_out
from stream.scoring.student import load_student
from training.distill import distill
from training.teacher import load_teacher
from txwatch.cli import main


@pytest.fixture(scope="module")
def linear_student(tmp_path_factory, dataset, models):
    out = tmp_path_factory.mktemp("linear") / "student"
    distill(dataset, load_teacher(models["teacher"]), out, family="linear", log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def rows(models):
    student = load_student(models["student"])
    return held_out(student, None, None, None)


@pytest.mark.parametrize("family", ["trees", "linear"])
def test_onnx_scores_equal_the_students_and_carry_the_feature_names(tmp_path, models, linear_student, rows, family):
    model_dir = models["student"] if family == "trees" else linear_student
    student = load_student(model_dir)
    out = tmp_path / "student.onnx"
    report = export(str(model_dir), "onnx", str(out))
    assert report["rows_checked"] == len(rows[0]) > 1000
    sess = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    X = rows[0]
    got = sess.run(["probability"], {"features": X})[0][:, 0]
    assert np.max(np.abs(got - student.score(X))) <= 1e-6
    meta = sess.get_modelmeta().custom_metadata_map
    assert tuple(orjson.loads(meta["feature_names"])) == student.feature_names
    assert float(meta["threshold"]) == student.threshold and meta["family"] == family
    # A missing value is read as 0, as txwatch reads it.
    Xn = X[:50].copy()
    Xn[:, ::5] = np.nan
    assert np.max(np.abs(sess.run(None, {"features": Xn})[0][:, 0] - student.score(Xn))) <= 1e-6


def test_an_onnx_export_that_fails_its_check_writes_nothing(tmp_path, models, monkeypatch):
    monkeypatch.setattr(onnx_model, "score", lambda sess, X: np.zeros(len(X)))
    out = tmp_path / "student.onnx"
    with pytest.raises(ExportError, match="nothing written"):
        export(str(models["student"]), "onnx", str(out))
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", ["trees", "linear"])
def test_the_integer_evaluators_agree_and_keep_the_auprc(tmp_path, models, linear_student, rows, family):
    model_dir = models["student"] if family == "trees" else linear_student
    student = load_student(model_dir)
    report = export(str(model_dir), "fixed", str(tmp_path / "fixed"))
    assert report["auprc"]["fixed"] >= 0.995 * report["auprc"]["float"]
    assert report["alert_decisions_differing"] <= 0.01 * report["rows_checked"]
    model = fixed.quantise(student)
    saved = orjson.loads((tmp_path / "fixed" / "fixed_model.json").read_bytes())
    assert saved["threshold"] == model.threshold and saved["feature_rule"] == fixed.feature_rule(model)
    XQ = fixed.quantise_features(model, rows[0][:400])
    reference = [fixed.raw_reference(model, row) for row in XQ.tolist()]
    assert all(type(v) is int for v in reference)
    assert fixed.raw_batch(model, XQ).tolist() == reference
    error = np.abs(np.array(reference) / 2.0 ** fixed.SCORE_BITS - student.raw(rows[0][:400]))
    if family == "trees":
        # Order keys decide every branch as the float student does: only the leaf values'
        # rounding is left, half a unit of 2**-SCORE_BITS per tree at most.
        assert error.max() <= len(model.roots) * 2.0 ** -(fixed.SCORE_BITS + 1)
        assert report["alert_decisions_differing"] == 0
    else:
        # Fixed-point features and weights: each term is off by at most |w| * 2**-LINEAR_FEATURE_BITS
        # (the feature's floor) plus |x| * 2**-(LINEAR_WEIGHT_BITS + 1) (the weight's rounding),
        # plus one unit for the final shift and half a unit for the bias.
        w = np.abs(student.impl._w)
        X = np.abs(np.nan_to_num(rows[0][:400]))
        bound = (w.sum() * 2.0 ** -fixed.LINEAR_FEATURE_BITS + X @ np.full(len(w), 2.0 ** -(fixed.LINEAR_WEIGHT_BITS + 1))
                 + 1.5 * 2.0 ** -fixed.SCORE_BITS)
        assert np.all(error <= bound * (1 + 1e-9))


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
@pytest.mark.parametrize("family", ["trees", "linear"])
def test_the_generated_c_uses_no_floating_point_and_equals_the_reference(tmp_path, models, linear_student, rows, family):
    model_dir = models["student"] if family == "trees" else linear_student
    model = fixed.quantise(load_student(model_dir))
    export(str(model_dir), "fixed", str(tmp_path / "fixed"))
    cc = shutil.which("cc") or shutil.which("gcc")
    driver = tmp_path / "driver.c"
    driver.write_text('#include <stdint.h>\n#include <stdio.h>\nint64_t txwatch_raw(const int64_t *x);\n'
                      'int txwatch_alert(const int64_t *x);\nint main(void) {\n'
                      f'  int64_t x[{model.n_features}];\n'
                      f'  while (1) {{ for (int j = 0; j < {model.n_features}; j++) '
                      'if (scanf("%lld", (long long *)&x[j]) != 1) return 0;\n'
                      '    printf("%lld %d\\n", (long long)txwatch_raw(x), txwatch_alert(x)); }\n}\n')
    # -mgeneral-regs-only: the compiler refuses any floating-point register use in the evaluator.
    subprocess.run([cc, "-O2", "-std=c99", "-Wall", "-Werror", "-mgeneral-regs-only", "-c",
                    str(tmp_path / "fixed" / "txwatch_student.c"), "-o", str(tmp_path / "model.o")], check=True)
    subprocess.run([cc, "-O2", str(driver), str(tmp_path / "model.o"), "-o", str(tmp_path / "run")], check=True)
    XQ = fixed.quantise_features(model, rows[0][:300])
    out = subprocess.run([str(tmp_path / "run")], input="\n".join(" ".join(map(str, r)) for r in XQ.tolist()),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    got = [tuple(map(int, line.split())) for line in out if line]
    expected = [(r, int(r >= model.alert_raw)) for r in (fixed.raw_reference(model, row) for row in XQ.tolist())]
    assert got == expected


def test_an_integer_form_that_loses_auprc_is_refused_and_nothing_written(tmp_path, models, monkeypatch):
    real = fixed.quantise

    def broken(student):
        model = real(student)
        model.value = [-v for v in model.value]  # ranks upside down
        return model

    monkeypatch.setattr(fixed, "quantise", broken)
    with pytest.raises(ExportError, match="AUPRC"):
        export(str(models["student"]), "fixed", str(tmp_path / "fixed"))
    assert list(tmp_path.iterdir()) == []


def _run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    return code, capsys.readouterr().err


def test_refusals_are_one_line_and_write_nothing(tmp_path, models, capsys):
    out = tmp_path / "out.onnx"
    code, err = _run(capsys, "export", "--model", models["teacher"], "--format", "onnx", "--out", out)
    assert code == 2 and "teacher" in err and err.count("\n") == 1 and "Traceback" not in err
    tampered = tmp_path / "tampered"
    shutil.copytree(models["student"], tampered)
    payload = tampered / "student.json"
    payload.write_bytes(payload.read_bytes().replace(b'"trees"', b'"treez"', 1))
    code, err = _run(capsys, "export", "--model", tampered, "--format", "fixed", "--out", tmp_path / "fx")
    assert code == 2 and "sha256" in err.lower() and err.count("\n") == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, err = _run(capsys, "export", "--model", models["student"], "--format", "onnx", "--out", blocker / "s.onnx")
    assert code == 2 and "a-file" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        main(["export", "--model", str(models["student"]), "--format", "pmml", "--out", str(out)])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "tampered"]


def test_missing_training_data_asks_for_events(tmp_path, models, capsys):
    moved = tmp_path / "student"
    shutil.copytree(models["student"], moved)
    manifest = orjson.loads((moved / "manifest.json").read_bytes())
    source = Path(manifest["training_data"]["path"])
    code, err = _run(capsys, "export", "--model", moved, "--format", "onnx", "--out", tmp_path / "s.onnx",
                     "--events", tmp_path / "nowhere.jsonl")
    assert code == 2 and "nowhere.jsonl" in err
    assert source.is_file()  # the recorded data is still used when --events is not given
