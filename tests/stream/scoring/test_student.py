import lightgbm as lgb
import numpy as np
import pytest

from stream.errors import ArtifactError
from stream.scoring.artifact import write_artifact
from stream.scoring.student import (
    STUDENT_FILE, LinearModel, TreeEnsemble, load_student, student_payload_bytes,
)
from training.distill import trees_from_model_string


def booster(X, y, objective="binary", rounds=25, leaves=15, **extra):
    params = {"objective": objective, "num_leaves": leaves, "verbosity": -1, "min_child_samples": 5,
              "seed": 1, "deterministic": True, **extra}
    return lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=rounds)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    X[:, 5] = rng.integers(0, 2, 3000)  # a binary column
    y = ((X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(0, 0.5, 3000)) > 1).astype(int)
    return X, y


def ensemble(b, n):
    return TreeEnsemble(trees_from_model_string(b.model_to_string()), n)


def test_batch_scores_equal_lightgbm(data):
    X, y = data
    b = booster(X, y)
    ens = ensemble(b, X.shape[1])
    assert ens.plain  # no missing values in training: the interleaved kernel is used
    for n in (1, 7, 8, 9, 511, 512, 1000, len(X)):  # partial/full blocks, serial/parallel kernels
        np.testing.assert_allclose(ens.raw(X[:n]), b.predict(X[:n], raw_score=True), rtol=0, atol=1e-9)
    with_nan = X[:100].copy()
    with_nan[::3, 2] = np.nan
    np.testing.assert_allclose(ens.raw(with_nan), b.predict(with_nan, raw_score=True), rtol=0, atol=1e-9)


def test_missing_values_follow_lightgbm_rules(data):
    X, y = data
    Xn = X.copy()
    Xn[::5, 0] = np.nan  # seen in training -> NaN missing type, learned default direction
    b = booster(Xn, y)
    ens = ensemble(b, X.shape[1])
    assert not ens.plain
    probe = X[:500].copy()
    probe[::3, 0] = np.nan
    probe[::7, 1] = np.nan  # never missing in training -> treated as 0
    np.testing.assert_allclose(ens.raw(probe), b.predict(probe, raw_score=True), atol=1e-9)
    single = np.array([ens.raw_one(r.tolist()) for r in probe])
    np.testing.assert_allclose(single, b.predict(probe, raw_score=True), atol=1e-9)


def test_zero_as_missing_matches_lightgbm(data):
    X, y = data
    Xz = X.copy()
    Xz[::4, 2] = 0.0
    b = booster(Xz, y, zero_as_missing=True)
    ens = ensemble(b, X.shape[1])
    probe = Xz[:400].copy()
    probe[::5, 3] = np.nan
    np.testing.assert_allclose(ens.raw(probe), b.predict(probe, raw_score=True), atol=1e-9)
    single = np.array([ens.raw_one(r.tolist()) for r in probe])
    np.testing.assert_allclose(single, b.predict(probe, raw_score=True), atol=1e-9)


def test_single_row_code_equals_batch(data):
    X, y = data
    ens = ensemble(booster(X, y), X.shape[1])
    single = np.array([ens.raw_one(r.tolist()) for r in X[:1000]])
    np.testing.assert_allclose(single, ens.raw(X[:1000]), atol=1e-12)
    with_nan = X[0].tolist()
    with_nan[3] = float("nan")
    zeroed = X[0].tolist()
    zeroed[3] = 0.0
    assert ens.raw_one(with_nan) == ens.raw_one(zeroed)  # plain model: NaN reads as 0


def test_soft_target_model_and_single_leaf_trees(data):
    X, y = data
    soft = 1 / (1 + np.exp(-X[:, 0]))
    b = booster(X, soft, objective="cross_entropy", rounds=5)
    ens = ensemble(b, X.shape[1])
    np.testing.assert_allclose(ens.raw(X), b.predict(X, raw_score=True), atol=1e-9)
    stump = booster(X, np.zeros(len(X)) + 0.3, objective="cross_entropy", rounds=2)
    flat = ensemble(stump, X.shape[1])
    np.testing.assert_allclose(flat.raw(X[:10]), stump.predict(X[:10], raw_score=True), atol=1e-9)


def test_path_contributions_add_up_to_the_score(data):
    X, y = data
    ens = ensemble(booster(X, y), X.shape[1])
    contrib = ens.contributions(X[:200])
    base = ens.value[ens.roots].sum()
    np.testing.assert_allclose(contrib.sum(axis=1) + base, ens.raw(X[:200]), atol=1e-9)


def test_linear_model_scores_and_contributions():
    lin = LinearModel([1.0, -2.0], 0.5, [1.0, 0.0], [2.0, 1.0])
    X = np.array([[3.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(lin.raw(X), [1.0 - 2.0 + 0.5, 0.5])
    assert lin.raw_one([3.0, 1.0]) == pytest.approx(-0.5)
    np.testing.assert_allclose(lin.contributions(X), [[1.0, -2.0], [0.0, 0.0]])


def _student(tmp_path, payload, names, threshold=0.5):
    manifest = {"kind": "student", "model_version": "v-test", "feature_names": names,
                "feature_schema_hash": "h", "threshold": {"value": threshold}}
    write_artifact(tmp_path / "m", {STUDENT_FILE: student_payload_bytes(payload)}, manifest)
    return load_student(tmp_path / "m", feature_schema_hash="h")


def test_student_round_trip_reasons_and_calibration(tmp_path, data):
    X, y = data
    b = booster(X, y)
    names = [f"f{i}" for i in range(X.shape[1])]
    payload = {"family": "trees", "trees": trees_from_model_string(b.model_to_string()),
               "calibration": {"a": 0.5, "b": -1.0}}
    st = _student(tmp_path, payload, names)
    raw = b.predict(X[:50], raw_score=True)
    np.testing.assert_allclose(st.score(X[:50]), 1 / (1 + np.exp(-(0.5 * raw - 1.0))), atol=1e-12)
    assert st.score_one(X[0].tolist()) == pytest.approx(st.score(X[:1])[0], abs=1e-12)
    reasons = st.reasons(X[:20], k=2)
    assert len(reasons) == 20
    for rs in reasons:
        assert len(rs) <= 2
        assert all(name in names and c > 0 for name, c in rs)
        assert [c for _, c in rs] == sorted((c for _, c in rs), reverse=True)
    # Feature 0 drives the label: it must be the top reason for the highest-scored rows.
    top = np.argsort(-st.raw(X))[:20]
    assert sum(r[0][0] == "f0" for r in st.reasons(X[top], k=1) if r) >= 10


def test_student_refuses_unknown_family_and_bad_trees(tmp_path):
    with pytest.raises(ArtifactError, match="unknown student family"):
        _student(tmp_path, {"family": "forest"}, ["a"])
    bad = {"family": "trees", "trees": [{"leaf_value": [0.0, 1.0], "split_feature": [7], "threshold": [0.0],
                                         "decision_type": [2], "left_child": [-1], "right_child": [-2]}]}
    with pytest.raises(ArtifactError, match="feature 7"):
        _student(tmp_path, bad, ["a"])


def test_cyclic_tree_is_refused_not_looped_over(tmp_path):
    # A crafted artifact (hashes recomputed) whose child links form a cycle.
    cyclic = {"family": "trees", "trees": [{"leaf_value": [0.0, 1.0, 2.0], "split_feature": [0, 0],
                                             "threshold": [0.0, 1.0], "decision_type": [2, 2],
                                             "left_child": [1, 0], "right_child": [-1, -2]}]}
    with pytest.raises(ArtifactError, match="not one connected tree"):
        _student(tmp_path, cyclic, ["a"])
