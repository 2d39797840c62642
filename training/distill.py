"""Distil the teacher into a compact student.

The student learns the teacher's *soft targets*: ``p_T = sigmoid(teacher_logit / T)``
with temperature ``T``, minimising the cross-entropy ``-[p_T log q + (1 - p_T) log(1 - q)]``
(equal to the KL divergence to the teacher up to a constant). The transfer set is the
training period plus augmented rows (training rows with Gaussian noise on their
continuous features, 0.2 standard deviations by default), which the teacher labels:
unlabelled data costs nothing here, and the wider the noise, the more of the space around
the training rows (where attacks one step off the script fall) the student is shown the
teacher's answers for.

Student families (each a scikit-learn-style trainer; ``fit`` returns self):

* :class:`TreeStudent`: a small LightGBM with the ``cross_entropy`` objective on the soft
  targets, early-stopped on the validation period's soft targets, L2-regularised; its
  size is capped at ``leaf_budget`` (default 3 %, chosen by measurement: ``docs/models.md``) of the teacher's leaves.
* :class:`LinearStudent`: logistic regression on standardised features, fitted to the
  soft targets by weighting each row once as positive (``p_T``) and once as negative
  (``1 - p_T``), which is exactly the soft cross-entropy; L2 penalty ``C``.

Both keep the teacher's risk directions (:mod:`training.monotone`): the trees through
LightGBM's monotone constraints, the linear model by holding each constrained
coefficient to its sign. Platt scaling with a positive slope keeps the direction.

Every family is fitted, compared on the validation period, and the best by validation
AUPRC becomes the artifact (``--family`` forces one). The student's raw score is then
calibrated by Platt scaling on validation labels, and the alert threshold is chosen on the
calibrated validation scores for the configured target (alert rate or precision). The
artifact also carries the student's reference profile (``profile.json``,
:mod:`stream.scoring.profile`): training-period feature bins, the validation score
histogram and alert rate, and its fidelity to the teacher.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import lightgbm as lgb
import numpy as np
from sklearn.linear_model import LogisticRegression

from stream.errors import DataError
from stream.scoring.artifact import sha256_bytes, utc_now, version_stamp, write_artifact
from stream.scoring.profile import PROFILE_FILE, build_profile, fidelity, profile_bytes
from stream.scoring.student import STUDENT_FILE, Student, student_payload_bytes
from training import metrics as M
from training.dataset import TEST, TRAIN, VALID, Dataset
from training.defaults import DEFAULT_LEAF_BUDGET, DEFAULT_NOISE
from training.monotone import as_manifest, constraint_vector, lightgbm_params
from training.teacher import TEACHER_FILE, Teacher

FAMILIES = ("trees", "linear")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def soft_targets(teacher_raw: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities softened by ``temperature``."""
    return sigmoid(teacher_raw / temperature)


def soft_cross_entropy(p: np.ndarray, q: np.ndarray) -> float:
    """Mean binary cross-entropy of predictions ``q`` against soft targets ``p``."""
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Mean KL(p || q) of Bernoulli distributions."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return soft_cross_entropy(p, q) - soft_cross_entropy(p, p)


def augment(X: np.ndarray, factor: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy copies of random rows: continuous columns get ``noise * std`` Gaussian noise.

    Binary columns are left as they are; values stay inside each column's observed range.
    """
    n = int(round(factor * len(X)))
    if n <= 0 or len(X) == 0:
        return np.zeros((0, X.shape[1]))
    rows = X[rng.integers(0, len(X), n)].copy()
    lo, hi = np.nanmin(X, axis=0), np.nanmax(X, axis=0)
    binary = np.all((X == 0) | (X == 1) | np.isnan(X), axis=0)
    std = np.nanstd(X, axis=0)
    cont = ~binary & (std > 0)
    rows[:, cont] += rng.normal(0.0, 1.0, (n, int(cont.sum()))) * (noise * std[cont])
    return np.clip(rows, lo, hi)


_TREE_RE = re.compile(r"^Tree=\d+$", re.M)


def trees_from_model_string(text: str) -> list[dict[str, list]]:
    """LightGBM's text model -> per-tree arrays (full-precision thresholds and values)."""
    body = text.split("end of trees")[0]
    blocks = _TREE_RE.split(body)[1:]
    trees = []
    for block in blocks:
        fields = dict(line.split("=", 1) for line in block.strip().splitlines() if "=" in line)
        if int(fields.get("num_cat", "0")) != 0:
            raise DataError("categorical splits are not supported in students")
        tree: dict[str, list] = {
            "leaf_value": [float(v) for v in fields["leaf_value"].split()],
            "leaf_count": [int(v) for v in fields.get("leaf_count", "").split()],
        }
        if int(fields["num_leaves"]) > 1:
            tree["split_feature"] = [int(v) for v in fields["split_feature"].split()]
            tree["threshold"] = [float(v) for v in fields["threshold"].split()]
            tree["decision_type"] = [int(v) for v in fields["decision_type"].split()]
            tree["left_child"] = [int(v) for v in fields["left_child"].split()]
            tree["right_child"] = [int(v) for v in fields["right_child"].split()]
        if not tree["leaf_count"]:
            tree["leaf_count"] = [1] * len(tree["leaf_value"])
        trees.append(tree)
    return trees


class TreeStudent:
    """Small LightGBM fitted to the teacher's soft targets (cross-entropy objective)."""

    family = "trees"

    def __init__(self, n_estimators: int = 1000, num_leaves: int = 7, learning_rate: float = 0.3,
                 temperature: float = 10.0, lambda_l2: float = 1.0, min_child_samples: int = 40,
                 feature_fraction: float = 0.9, early_stopping_rounds: int = 20,
                 max_leaves: int | None = None, seed: int = 0,
                 monotone_constraints: list[int] | None = None) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.temperature = temperature
        self.lambda_l2 = lambda_l2
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.early_stopping_rounds = early_stopping_rounds
        self.max_leaves = max_leaves
        self.seed = seed
        self.monotone_constraints = monotone_constraints

    def fit(self, X: np.ndarray, teacher_raw: np.ndarray, X_val: np.ndarray,
            teacher_raw_val: np.ndarray) -> "TreeStudent":
        """Fit on the transfer set; early-stop on validation soft targets."""
        rounds = self.n_estimators
        if self.max_leaves is not None:
            rounds = max(1, min(rounds, self.max_leaves // self.num_leaves))
        params = {
            "objective": "cross_entropy", "metric": "cross_entropy",
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "lambda_l2": self.lambda_l2, "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "verbosity": -1,
        } | lightgbm_params(self.monotone_constraints or ())
        train = lgb.Dataset(X, label=soft_targets(teacher_raw, self.temperature))
        valid = lgb.Dataset(X_val, label=soft_targets(teacher_raw_val, self.temperature), reference=train)
        booster = lgb.train(params, train, num_boost_round=rounds, valid_sets=[valid],
                            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
        self.params_ = {k: v for k, v in params.items() if k != "monotone_constraints"} | {
            "rounds": rounds, "temperature": self.temperature}
        self.trees_ = trees_from_model_string(booster.model_to_string(num_iteration=booster.best_iteration))
        return self

    def payload(self) -> dict[str, Any]:
        """The serving payload (before calibration is added)."""
        return {"family": "trees", "trees": self.trees_}


class LinearStudent:
    """Logistic regression on standardised features, fitted to soft targets."""

    family = "linear"

    def __init__(self, C: float = 1.0, temperature: float = 10.0, max_iter: int = 1000,
                 monotone_constraints: list[int] | None = None) -> None:
        self.C = C
        self.temperature = temperature
        self.max_iter = max_iter
        self.monotone_constraints = monotone_constraints

    def fit(self, X: np.ndarray, teacher_raw: np.ndarray, X_val: np.ndarray | None = None,
            teacher_raw_val: np.ndarray | None = None) -> "LinearStudent":
        """Fit by soft cross-entropy (each row weighted ``p_T`` as 1 and ``1 - p_T`` as 0)."""
        X = np.nan_to_num(X, nan=0.0)
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        Z = (X - self.mean_) / self.scale_
        p = soft_targets(teacher_raw, self.temperature)
        n = len(Z)
        signs = np.asarray(self.monotone_constraints or [0] * Z.shape[1])
        active = np.ones(Z.shape[1], dtype=bool)
        # Sign constraints by elimination: a constrained coefficient fitted against its
        # direction is fixed at 0 and the rest refitted, until every sign holds.
        for _ in range(Z.shape[1] + 1):
            model = LogisticRegression(C=self.C, max_iter=self.max_iter)
            model.fit(np.vstack([Z[:, active], Z[:, active]]), np.r_[np.ones(n), np.zeros(n)],
                      sample_weight=np.r_[p, 1.0 - p])
            coef = np.zeros(Z.shape[1])
            coef[active] = model.coef_[0]
            wrong = (signs * coef) < 0
            if not wrong.any():
                break
            active &= ~wrong
        self.coef_ = coef
        self.intercept_ = float(model.intercept_[0])
        self.params_ = {"C": self.C, "temperature": self.temperature}
        return self

    def payload(self) -> dict[str, Any]:
        """The serving payload (before calibration is added)."""
        return {"family": "linear", "coef": self.coef_.tolist(), "intercept": self.intercept_,
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist()}


def platt(raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling ``p = sigmoid(a * raw + b)`` fitted on labelled validation scores."""
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(raw.reshape(-1, 1), y)
    a = float(lr.coef_[0, 0])
    if not a > 0:
        raise DataError(f"calibration slope {a:.4g} is not positive: the student's score does not rank "
                        "validation positives above negatives")
    return {"a": a, "b": float(lr.intercept_[0])}


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, *, alert_rate: float | None,
                     precision: float | None) -> dict[str, Any]:
    """The alert threshold for the stated target, from validation scores."""
    if precision is not None:
        value = M.threshold_for_precision(y_val, p_val, precision)
        target = {"precision": precision}
    else:
        rate = 0.01 if alert_rate is None else alert_rate
        value = M.threshold_for_alert_rate(p_val, rate)
        target = {"alert_rate": rate}
    prec, rec = M.precision_recall_at(y_val, p_val, value)
    return {"value": float(value), "target": target,
            "valid": {"precision": prec, "recall": rec, "alert_rate": float(np.mean(p_val >= value))}}


def make_trainer(family: str, temperature: float, teacher_leaves: int, leaf_budget: float,
                 seed: int, monotone_constraints: list[int] | None = None, **overrides: Any):
    """A student trainer of ``family`` with the shared distillation settings."""
    if family == "trees":
        return TreeStudent(temperature=temperature, seed=seed, monotone_constraints=monotone_constraints,
                           max_leaves=max(1, int(leaf_budget * teacher_leaves)), **overrides)
    if family == "linear":
        return LinearStudent(temperature=temperature, monotone_constraints=monotone_constraints, **overrides)
    raise DataError(f"unknown student family {family!r} (choose from {', '.join(FAMILIES)})")


def distill(ds: Dataset, teacher: Teacher, out_dir: str | os.PathLike, *,
            families: tuple[str, ...] = FAMILIES, family: str | None = None,
            temperature: float = 10.0, augment_factor: float = 1.0, noise: float = DEFAULT_NOISE,
            leaf_budget: float = DEFAULT_LEAF_BUDGET, alert_rate: float | None = 0.01, precision: float | None = None,
            tree_leaves: int | None = None, tree_learning_rate: float | None = None,
            monotone: tuple[str, ...] | None = None, seed: int = 0, log=print) -> dict[str, Any]:
    """Fit every family, compare them, save the chosen student; return its manifest.

    ``monotone``: the features held to their risk direction; ``None`` takes the teacher's.
    """
    ds.require_labels()
    if monotone is None:
        monotone = teacher.monotone
    vector = constraint_vector(ds.feature_names, monotone)
    if tuple(teacher.feature_names) != tuple(ds.feature_names):
        raise DataError("the teacher was trained on other features than this data provides")
    if temperature <= 0:
        raise DataError("--temperature must be > 0")
    rng = np.random.default_rng(seed)
    X_tr, _ = ds.part(TRAIN)
    X_val, y_val = ds.part(VALID)
    X_te, y_te = ds.part(TEST)
    X_aug = augment(X_tr, augment_factor, noise, rng)
    X_transfer = np.vstack([X_tr, X_aug]) if len(X_aug) else X_tr
    log(f"transfer set: {len(X_tr):,} training rows + {len(X_aug):,} augmented rows")
    t_transfer, t_val, t_te = teacher.raw(X_transfer), teacher.raw(X_val), teacher.raw(X_te)
    p_val_teacher = soft_targets(t_val, temperature)

    candidates = (family,) if family else families
    results: dict[str, dict[str, Any]] = {}
    fitted = {}
    for fam in candidates:
        t0 = time.perf_counter()
        overrides: dict[str, Any] = {}
        if fam == "trees":
            if tree_leaves is not None:
                overrides["num_leaves"] = tree_leaves
            if tree_learning_rate is not None:
                overrides["learning_rate"] = tree_learning_rate
        trainer = make_trainer(fam, temperature, teacher.n_leaves, leaf_budget, seed,
                               monotone_constraints=vector, **overrides)
        trainer.fit(X_transfer, t_transfer, X_val, t_val)
        payload = trainer.payload()
        raw_val = Student(_stub_manifest(ds), payload).raw(X_val)
        cal = platt(raw_val, y_val)
        payload["calibration"] = cal
        payload["temperature"] = temperature
        student = Student(_stub_manifest(ds), payload)
        p_val, p_te = student.score(X_val), student.score(X_te)
        results[fam] = {
            "valid_auprc": M.auprc(y_val, p_val),
            "valid_kl_to_teacher": kl_divergence(p_val_teacher, sigmoid(raw_val)),
            "valid_spearman_to_teacher": M.spearman(t_val, raw_val),
            "test_auprc": M.auprc(y_te, p_te),
            "test_spearman_to_teacher": M.spearman(t_te, student.raw(X_te)),
            "trees": student.n_trees, "leaves": student.n_leaves,
            "bytes": len(student_payload_bytes(payload)),
            "fit_seconds": round(time.perf_counter() - t0, 2),
        }
        fitted[fam] = (trainer, payload, student)
        log(f"student {fam}: valid AUPRC {results[fam]['valid_auprc']:.4f}, "
            f"KL to teacher {results[fam]['valid_kl_to_teacher']:.5f}, leaves {student.n_leaves}")
    chosen = family or max(results, key=lambda f: (results[f]["valid_auprc"], -results[f]["bytes"]))
    trainer, payload, student = fitted[chosen]
    p_val = student.score(X_val)
    threshold = choose_threshold(y_val, p_val, alert_rate=alert_rate, precision=precision)
    # The reference profile the worker measures drift against: training-period rows (not
    # the augmented ones), the calibrated validation scores, agreement with the teacher.
    valid_alert_rate = threshold.get("valid", {}).get("alert_rate")
    if valid_alert_rate is None:
        valid_alert_rate = float(np.mean(p_val >= threshold["value"]))
    profile = build_profile(X_tr, ds.feature_names, p_val, threshold=threshold["value"],
                            alert_rate=valid_alert_rate, alert_rate_target=threshold["target"].get("alert_rate"),
                            fidelity=fidelity(p_val, teacher.score(X_val)))
    p_te = student.score(X_te)
    teacher_p_te = teacher.score(X_te)
    body = student_payload_bytes(payload)
    created = utc_now()
    manifest = {
        "kind": "student",
        "family": chosen,
        "model_version": f"student-{version_stamp(created)}-{sha256_bytes(body)[:8]}",
        "created_at": created,
        **ds.manifest_base(),
        "teacher": {"model_version": teacher.version, "path": os.path.abspath(teacher.path),
                    "sha256": teacher.manifest["files"][TEACHER_FILE], "size": teacher.manifest["size"]},
        "params": trainer.params_ | {"augment_factor": augment_factor, "noise": noise,
                                     "leaf_budget": leaf_budget, "seed": seed},
        "threshold": threshold,
        "monotone": as_manifest(monotone),
        "size": {"trees": student.n_trees, "leaves": student.n_leaves, "bytes": len(body)},
        "profile": {"file": PROFILE_FILE, "fidelity": profile.to_dict()["fidelity"],
                    "alert_rate": profile.alert_rate},
        "metrics": {
            "comparison": results,
            "test": {"student": M.summarize(y_te, p_te, threshold["value"]),
                     "teacher_auprc": M.auprc(y_te, teacher_p_te),
                     "spearman_to_teacher": M.spearman(t_te, student.raw(X_te))},
        },
    }
    write_artifact(out_dir, {STUDENT_FILE: body, PROFILE_FILE: profile_bytes(profile)}, manifest)
    log(f"chose {chosen}: test AUPRC student {manifest['metrics']['test']['student']['auprc']:.4f} "
        f"vs teacher {manifest['metrics']['test']['teacher_auprc']:.4f}; threshold "
        f"{threshold['value']:.4f} for {threshold['target']}")
    return manifest


def _stub_manifest(ds: Dataset) -> dict[str, Any]:
    """A manifest just sufficient to score a candidate before it is saved."""
    return {"feature_names": list(ds.feature_names), "model_version": "candidate",
            "threshold": {"value": 0.5}}
