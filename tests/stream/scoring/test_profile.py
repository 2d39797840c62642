"""The reference profile: building, binning, PSI, fidelity, its JSON form, and the artifact it rides in."""

from __future__ import annotations

import bisect
import math
import shutil

import numpy as np
import orjson
import pytest

from stream.errors import ArtifactError
from stream.scoring.artifact import MANIFEST
from stream.scoring.profile import (
    PROFILE_FILE, Profile, build_profile, feature_counts, fidelity, load_profile, profile_bytes, psi,
    quantile_edges, score_counts,
)
from stream.scoring.student import load_student

FID = {"spearman": 0.95, "top_k_overlap": 0.8, "mean_abs_diff": 0.01, "kl": 0.002, "k": 10, "rows": 1000}
NAMES = ["amount", "flag", "const", "count"]


def synthetic(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([
        rng.lognormal(3.0, 1.0, n),                  # continuous
        (rng.random(n) < 0.03).astype(float),        # binary, rare ones
        np.full(n, 7.0),                             # constant
        rng.integers(0, 4, n).astype(float),         # few distinct values
    ])
    scores = rng.beta(1.0, 20.0, 2000)
    return X, scores


def make(X=None, scores=None, threshold=0.2, bins=10):
    if X is None:
        X, scores = synthetic()
    rate = float(np.mean(scores >= threshold))
    return build_profile(X, NAMES, scores, threshold=threshold, alert_rate=rate, alert_rate_target=0.01,
                         fidelity=FID, bins=bins)


def slow_bin(edges, x):
    """The bin rule, one value at a time."""
    return 0 if math.isnan(x) else bisect.bisect_right(list(edges), x)


def slow_counts(profile, X):
    out = np.zeros((len(profile.feature_names), profile.n_bins), dtype=np.int64)
    for j, e in enumerate(profile.edges):
        for x in X[:, j]:
            out[j, slow_bin(e, x)] += 1
    return out


# -- building ------------------------------------------------------------------------------
def test_build_shapes_and_frequencies():
    X, scores = synthetic()
    p = make(X, scores)
    assert p.feature_names == tuple(NAMES) and p.rows == len(X)
    for e, f in zip(p.edges, p.freq):
        assert len(f) == len(e) + 1
        assert np.all(np.diff(e) > 0)
        assert f.sum() == pytest.approx(1.0) and np.all(f >= 0)
    assert len(p.edges[0]) == 9                         # continuous: 9 interior deciles
    assert p.freq[0] == pytest.approx(np.full(10, 0.1), abs=1e-3)
    assert p.edges[1].tolist() == [1.0]                 # binary: one edge, even with 3 % ones
    assert p.freq[1][1] == pytest.approx(np.mean(X[:, 1]))
    assert p.edges[2].tolist() == [] and p.freq[2].tolist() == [1.0]   # constant: one bin
    assert p.edges[3].tolist() == [1.0, 2.0, 3.0]       # each of 4 values a bin of its own
    assert p.n_bins == 10
    assert p.score_freq.sum() == pytest.approx(1.0)


def test_threshold_is_a_score_edge_and_the_alert_region_is_the_last_bin():
    X, scores = synthetic()
    for threshold in (0.2, 0.05, 0.01):   # above, inside and below most of the score deciles
        p = make(X, scores, threshold=threshold)
        assert p.score_edges[-1] == threshold
        assert len(p.score_freq) == len(p.score_edges) + 1
        assert p.score_freq[-1] == pytest.approx(np.mean(scores >= threshold)) == pytest.approx(p.alert_rate)


def test_bin_rule_at_exact_edges_nan_and_infinities():
    X = np.array([[float(v)] for v in range(100)])
    p = build_profile(X, ["x"], np.linspace(0, 1, 50), threshold=0.5, alert_rate=0.5, alert_rate_target=None,
                      fidelity=FID, bins=4)
    e = p.edges[0]
    live = np.array([[e[0] - 1e-9], [e[0]], [e[1]], [e[2]], [e[2] + 1], [np.nan], [-np.inf], [np.inf]])
    c = feature_counts(p, live)[0]
    # bin 0: below e0, NaN, -inf; bin 1: e0; bin 2: e1; bin 3: e2, e2+1, +inf.
    assert c.tolist() == [3, 1, 1, 3]
    s = score_counts(p, np.array([0.5, 0.5 - 1e-12, np.nan, 1.0]))
    assert s[-1] == 2 and s[0] >= 1 and s.sum() == 4 and s.dtype == np.int64


def test_nan_counts_in_bin_zero_and_is_ignored_by_the_edges():
    X, scores = synthetic()
    X[::10, 0] = np.nan
    p = make(X, scores)
    assert np.all(np.isfinite(p.edges[0])) and len(p.edges[0]) == 9
    assert p.freq[0][0] == pytest.approx(0.1 + 0.9 * 0.1, abs=2e-3)
    assert quantile_edges(np.full(5, np.nan)).tolist() == []


def test_build_refuses_bad_input():
    X, scores = synthetic()
    with pytest.raises(ValueError, match="matrix"):
        build_profile(X[:, :2], NAMES, scores, threshold=0.1, alert_rate=0.1, alert_rate_target=None, fidelity=FID)
    with pytest.raises(ValueError, match="fidelity lacks"):
        build_profile(X, NAMES, scores, threshold=0.1, alert_rate=0.1, alert_rate_target=None, fidelity={})


# -- binning live data -------------------------------------------------------------------------
@pytest.mark.parametrize("bins", [10, 60])  # 60: past the comparison path, the searchsorted one
def test_feature_counts_equals_the_per_value_reference(bins):
    X, scores = synthetic(seed=1)
    p = make(X, scores, bins=bins)
    rng = np.random.default_rng(2)
    live, _ = synthetic(n=3000, seed=3)
    live[:, 2] = rng.normal(7.0, 1.0, len(live))        # the constant feature drifts
    for j, e in enumerate(p.edges):                      # a third of the values sit exactly on edges
        if len(e):
            on = rng.random(len(live)) < 0.33
            live[on, j] = rng.choice(e, on.sum())
    live[rng.random(live.shape) < 0.02] = np.nan
    got = feature_counts(p, live)
    assert got.dtype == np.int64 and got.shape == (len(NAMES), p.n_bins)
    np.testing.assert_array_equal(got, slow_counts(p, live))
    assert np.all(got.sum(axis=1) == len(live))


def test_feature_counts_on_training_rows_reproduce_the_frequencies():
    X, scores = synthetic()
    p = make(X, scores)
    c = feature_counts(p, X)
    for j, f in enumerate(p.freq):
        np.testing.assert_allclose(c[j, : len(f)] / len(X), f)
        assert not c[j, len(f):].any()
    assert feature_counts(p, np.zeros((0, len(NAMES)))).sum() == 0
    with pytest.raises(ValueError, match="matrix"):
        feature_counts(p, np.zeros((3, 2)))


# -- psi ---------------------------------------------------------------------------------------
def test_psi_is_zero_for_identical_distributions_and_grows_with_a_shift():
    X, scores = synthetic()
    p = make(X, scores)
    same = feature_counts(p, X)[0]
    assert psi(p.freq[0], same) == pytest.approx(0.0, abs=1e-12)
    values = []
    for shift in (0.0, 0.1, 0.3, 1.0):
        live = X.copy()
        live[:, 0] *= math.exp(shift)
        values.append(psi(p.freq[0], feature_counts(p, live)[0]))
    assert values[0] == pytest.approx(0.0, abs=1e-12)
    assert values == sorted(values) and values[1] > 0.01 and values[-1] > 0.5


def test_psi_is_roughly_symmetric_and_handles_empty_bins():
    a, b = np.array([0.2, 0.3, 0.5]), np.array([0.3, 0.3, 0.4])
    ab, ba = psi(a, b * 1000), psi(b, a * 1000)
    assert ab > 0 and ba > 0 and ab == pytest.approx(ba, rel=0.2)
    # A reference bin that was empty, and a live bin that is empty: finite, bounded by eps.
    assert math.isfinite(psi(np.array([0.0, 1.0]), np.array([5, 5])))
    assert math.isfinite(psi(np.array([0.5, 0.5]), np.array([0, 10])))
    assert psi(np.array([0.5, 0.5]), np.array([0, 0])) == 0.0
    # A counts row wider than the feature's bins (feature_counts' padding) is fine if the padding is empty.
    assert psi(np.array([0.5, 0.5]), np.array([5, 5, 0, 0])) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        psi(np.array([0.5, 0.5]), np.array([5, 5, 1]))
    with pytest.raises(ValueError):
        psi(np.array([0.2, 0.3, 0.5]), np.array([5, 5]))


# -- fidelity ----------------------------------------------------------------------------------
def test_fidelity_of_perfect_and_shuffled_students():
    rng = np.random.default_rng(0)
    t = rng.beta(0.5, 10.0, 4000)
    f = fidelity(t, t)
    assert f["spearman"] == pytest.approx(1.0) and f["top_k_overlap"] == 1.0
    assert f["mean_abs_diff"] == 0.0 and f["kl"] == pytest.approx(0.0, abs=1e-12)
    assert f["k"] == 40 and f["rows"] == 4000
    noisy = fidelity(np.clip(t + rng.normal(0, 0.01, t.size), 0, 1), t)
    shuffled = fidelity(rng.permutation(t), t)
    assert 1.0 > noisy["spearman"] > shuffled["spearman"]
    assert noisy["top_k_overlap"] > shuffled["top_k_overlap"]
    assert shuffled["kl"] > noisy["kl"] > 0 and shuffled["mean_abs_diff"] > noisy["mean_abs_diff"]
    assert fidelity(t[:10], t[:10])["k"] == 1
    assert math.isnan(fidelity(np.full(5, 0.5), t[:5])["spearman"])
    with pytest.raises(ValueError):
        fidelity(t[:3], t[:4])


# -- the JSON form -----------------------------------------------------------------------------
def test_round_trip_through_dict_and_bytes():
    p = make()
    q = Profile.from_dict(orjson.loads(profile_bytes(p)))
    assert q.to_dict() == p.to_dict()
    assert q.feature_names == p.feature_names and q.threshold == p.threshold
    for a, b in zip(p.edges + p.freq, q.edges + q.freq):
        np.testing.assert_array_equal(a, b)   # floats round-trip exactly
    X, _ = synthetic(seed=5)
    np.testing.assert_array_equal(feature_counts(p, X), feature_counts(q, X))
    nan_fid = Profile.from_dict(p.to_dict() | {"fidelity": FID | {"spearman": None}})
    assert math.isnan(nan_fid.fidelity["spearman"])
    assert nan_fid.to_dict()["fidelity"]["spearman"] is None


def _broken(change):
    d = make().to_dict()
    change(d)
    return d


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.update(schema=2), "schema"),
    (lambda d: d.pop("threshold"), "missing threshold"),
    (lambda d: d.update(rows=0), "rows"),
    (lambda d: d.update(rows=True), "rows"),
    (lambda d: d.update(feature_names=["amount", "amount", "const", "count"]), "repeat"),
    (lambda d: d["features"].pop("flag"), "one entry per feature"),
    (lambda d: d["features"]["amount"].update(edges=[3.0, 2.0] + d["features"]["amount"]["edges"][2:]),
     "strictly increasing"),
    (lambda d: d["features"]["flag"]["freq"].append(0.0), "1 edges but 3 frequencies"),
    (lambda d: d["features"]["flag"].update(freq=[0.5, 0.6]), "summing to 1"),
    (lambda d: d["features"]["flag"].update(edges=["1"]), "non-numeric"),
    (lambda d: d["score"].pop("freq"), "score needs lists"),
    (lambda d: d.update(alert_rate=1.5), "alert_rate"),
    (lambda d: d.update(alert_rate_target=0.0), "alert_rate_target"),
    (lambda d: d.update(threshold=None), "threshold must be a finite number"),
    (lambda d: d.update(fidelity=[]), "fidelity must be an object"),
    (lambda d: d["fidelity"].pop("kl"), "fidelity lacks kl"),
    (lambda d: d["fidelity"].update(k=1.5), "fidelity k"),
])
def test_malformed_profiles_are_refused_with_the_reason(change, reason):
    with pytest.raises(ArtifactError, match=reason):
        Profile.from_dict(_broken(change))
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        Profile.from_dict([])


# -- in a real distilled student ---------------------------------------------------------------
def test_the_distilled_student_carries_its_profile(models, models_student):
    p = load_profile(models["student"])
    assert p.feature_names == models_student.feature_names
    assert p.threshold == models_student.threshold
    assert p.fidelity["spearman"] > 0.8 and p.fidelity["rows"] > 1000
    target = p.alert_rate_target
    assert target == 0.01 and target / 2 <= p.alert_rate <= target * 2
    assert p.score_freq[-1] == pytest.approx(p.alert_rate)
    manifest = orjson.loads((models["student"] / MANIFEST).read_bytes())
    assert set(manifest["files"]) == {"student.json", PROFILE_FILE}
    assert manifest["profile"]["file"] == PROFILE_FILE
    assert manifest["profile"]["alert_rate"] == p.alert_rate


def test_a_tampered_profile_is_refused_by_its_sha256(models, tmp_path):
    bad = tmp_path / "student"
    shutil.copytree(models["student"], bad)
    data = bytearray((bad / PROFILE_FILE).read_bytes())
    i = data.index(b'"threshold":') + len(b'"threshold":')
    data[i] = ord("9") if data[i] != ord("9") else ord("8")   # one byte of the threshold's first digit
    (bad / PROFILE_FILE).write_bytes(bytes(data))
    # read_artifact checks every listed file, so both loaders refuse it before parsing anything.
    for load in (load_student, load_profile):
        with pytest.raises(ArtifactError, match="sha256"):
            load(bad)


def test_a_student_distilled_before_profiles_loads_but_has_no_profile(models, tmp_path):
    old = tmp_path / "student"
    shutil.copytree(models["student"], old)
    m = orjson.loads((old / MANIFEST).read_bytes())
    del m["files"][PROFILE_FILE]
    del m["profile"]
    (old / MANIFEST).write_bytes(orjson.dumps(m))
    (old / PROFILE_FILE).unlink()
    assert load_student(old).threshold == load_student(models["student"]).threshold
    with pytest.raises(ArtifactError, match=r"has no reference profile \(distilled before profiles existed\): "
                                            r"distil it again"):
        load_profile(old)


def test_warm_compiles_the_counting_kernel_for_the_types_feature_counts_passes():
    """In a fresh process (no earlier call compiled it): after warm(), feature_counts compiles nothing."""
    import subprocess
    import sys

    probe = """
import numpy as np
from stream.scoring import profile as m
m.warm()
before = len(m._count_bins.signatures)
p = m.build_profile(np.random.default_rng(0).normal(size=(500, 3)), ["a", "b", "c"], np.linspace(0, 1, 500),
                    threshold=0.5, alert_rate=0.5, alert_rate_target=None,
                    fidelity=dict(spearman=1.0, top_k_overlap=1.0, mean_abs_diff=0.0, kl=0.0, k=1, rows=2))
m.feature_counts(p, np.zeros((4, 3)))
print(before, len(m._count_bins.signatures))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["1", "1"]
