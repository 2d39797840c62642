"""The teacher: a deliberately large LightGBM model trained on labelled history.

It is trained on the earliest period and early-stopped on the next one (validation
average precision); the latest period is never seen. Class imbalance is handled with
``scale_pos_weight`` (default: the square root of the negative/positive ratio, which
boosts recall on rare positives without the extreme weights of the full ratio). On event
data the features of :data:`training.monotone.DEFAULT` are held to their risk direction
(LightGBM's monotone constraints; ``--monotone`` changes the set). The
artifact is LightGBM's own text model plus a manifest; no pickle.
"""

from __future__ import annotations

import os
from typing import Any

import lightgbm as lgb
import numpy as np

from stream.errors import ArtifactError
from stream.scoring.artifact import read_artifact, utc_now, version_stamp, write_artifact
from training.dataset import TRAIN, VALID, Dataset
from training.monotone import DEFAULT as DEFAULT_MONOTONE
from training.monotone import as_manifest, constraint_vector, lightgbm_params

TEACHER_FILE = "teacher.txt"


class TeacherTrainer:
    """scikit-learn-style trainer: ``fit(X, y, X_val, y_val)`` returns self; ``booster_``."""

    def __init__(self, n_estimators: int = 1500, num_leaves: int = 63, learning_rate: float = 0.03,
                 min_child_samples: int = 20, feature_fraction: float = 0.8,
                 bagging_fraction: float = 0.8, lambda_l2: float = 1.0,
                 scale_pos_weight: float | None = None, early_stopping_rounds: int = 200,
                 seed: int = 0, num_threads: int = 0, progress: bool = False,
                 monotone_constraints: list[int] | None = None) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_child_samples = min_child_samples
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.scale_pos_weight = scale_pos_weight
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed
        self.num_threads = num_threads
        self.progress = progress
        self.monotone_constraints = monotone_constraints

    def params(self, y: np.ndarray) -> dict[str, Any]:
        """LightGBM parameters for labels ``y`` (resolves the automatic class weight)."""
        pos = max(int(np.sum(y == 1)), 1)
        spw = self.scale_pos_weight or float(np.sqrt((len(y) - pos) / pos))
        params = {
            "objective": "binary", "metric": "average_precision",
            "num_leaves": self.num_leaves, "learning_rate": self.learning_rate,
            "min_child_samples": self.min_child_samples, "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction, "bagging_freq": 1, "lambda_l2": self.lambda_l2,
            "scale_pos_weight": spw, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.num_threads, "verbosity": -1,
        }
        return params | lightgbm_params(self.monotone_constraints or ())

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> "TeacherTrainer":
        """Train with early stopping on the validation set."""
        from stream.progress import progress_bar

        self.params_ = self.params(y)
        # Column names live in the manifest; LightGBM gets positional ones (it rejects
        # some characters that CSV headers may contain).
        train = lgb.Dataset(X, label=y, free_raw_data=True)
        valid = lgb.Dataset(X_val, label=y_val, reference=train)
        bar = progress_bar(self.n_estimators, "teacher", enabled=self.progress, unit="tree")

        def show(env: lgb.callback.CallbackEnv) -> None:
            bar.update(1)
            if env.evaluation_result_list and env.iteration % 10 == 0:
                bar.set_postfix_str(f"valid AP {env.evaluation_result_list[0][2]:.4f}")

        try:
            self.booster_ = lgb.train(
                self.params_, train, num_boost_round=self.n_estimators, valid_sets=[valid],
                valid_names=["valid"],
                callbacks=[show, lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
        finally:
            bar.close()
        self.best_iteration_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        self.best_score_ = float(self.booster_.best_score["valid"]["average_precision"])
        return self


class Teacher:
    """A loaded teacher: ``raw`` (log-odds) and ``score`` (probability) of batches."""

    def __init__(self, booster: lgb.Booster, manifest: dict[str, Any], path: str = "") -> None:
        self.booster = booster
        self.manifest = manifest
        self.path = path
        self.feature_names = tuple(manifest["feature_names"])
        self.version = manifest["model_version"]

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw scores (log-odds)."""
        return self.booster.predict(X, raw_score=True)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (the teacher's own, before any student calibration)."""
        return self.booster.predict(X)

    @property
    def monotone(self) -> tuple[str, ...]:
        """The features the teacher holds to their risk direction."""
        return tuple(self.manifest.get("monotone", {}))

    @property
    def n_trees(self) -> int:
        """Trees in the model."""
        return self.booster.num_trees()

    @property
    def n_leaves(self) -> int:
        """Total leaves over all trees."""
        return int(self.manifest["size"]["leaves"])


def count_leaves(booster: lgb.Booster) -> int:
    """Total number of leaves of a booster."""
    return sum(t["num_leaves"] for t in booster.dump_model()["tree_info"])


def save_teacher(out_dir: str | os.PathLike, trainer: TeacherTrainer, ds: Dataset,
                 monotone: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the teacher artifact; return its manifest."""
    booster = trainer.booster_
    text = booster.model_to_string(num_iteration=trainer.best_iteration_).encode()
    X_val, y_val = ds.part(VALID)
    from training.metrics import auprc

    best = lgb.Booster(model_str=text.decode())
    created = utc_now()
    manifest = {
        "kind": "teacher",
        "model_version": f"teacher-{version_stamp(created)}",
        "created_at": created,
        **ds.manifest_base(),
        "params": {k: v for k, v in trainer.params_.items() if k not in ("num_threads", "monotone_constraints")},
        "monotone": as_manifest(monotone),
        "size": {"trees": best.num_trees(), "leaves": count_leaves(best), "bytes": len(text)},
        "metrics": {"valid_auprc": auprc(y_val, best.predict(X_val))},
    }
    write_artifact(out_dir, {TEACHER_FILE: text}, manifest)
    return manifest


def load_teacher(path: str | os.PathLike, *, feature_schema_hash: str | None = None) -> Teacher:
    """Load and verify a teacher artifact."""
    manifest, files = read_artifact(path, kind="teacher", feature_schema_hash=feature_schema_hash)
    if TEACHER_FILE not in files:
        raise ArtifactError(f"{path}: manifest does not list {TEACHER_FILE}")
    try:
        booster = lgb.Booster(model_str=files[TEACHER_FILE].decode())
    except (lgb.basic.LightGBMError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {TEACHER_FILE} is not a LightGBM model ({exc})") from None
    return Teacher(booster, manifest, str(path))


def train_teacher(ds: Dataset, out_dir: str | os.PathLike, *, monotone: tuple[str, ...] | None = None,
                  **params: Any) -> dict[str, Any]:
    """Fit a teacher on ``ds`` (train split, early-stopped on valid) and save it.

    ``monotone`` names the features held to their risk direction (:mod:`training.monotone`);
    ``None`` means the default set for event data and none for a table.
    """
    ds.require_labels()
    if monotone is None:
        monotone = DEFAULT_MONOTONE if ds.mode == "events" else ()
    X, y = ds.part(TRAIN)
    X_val, y_val = ds.part(VALID)
    vector = constraint_vector(ds.feature_names, monotone)
    trainer = TeacherTrainer(monotone_constraints=vector, **params).fit(X, y, X_val, y_val)
    return save_teacher(out_dir, trainer, ds, tuple(monotone))
