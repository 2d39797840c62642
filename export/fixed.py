"""The student in integer arithmetic only: quantised model, reference evaluator, generated C.

Quantisation rules (stated in the exported model and the generated C):

* **features, tree students**: each feature is passed as the *order key* of its IEEE-754
  binary64 value: with ``m`` the low 63 bits of the value's bit pattern, ``key(x) = m``
  for ``x >= 0`` and ``-m`` for ``x < 0`` (a missing value, NaN, as 0; -0.0 and 0.0 both
  give 0). The key is monotone in ``x``, so ``key(x) <= key(t)`` exactly when ``x <= t``:
  every branch decision is the float student's, including on the tiny decayed counts
  (1e-17 against a split at 3e-18) that any uniform fixed point would round to zero. A
  caller derives the key from the double's bits with integer operations only, or
  precomputes it where features are made.
* **features, linear students**: fixed point, ``floor(x * 2**LINEAR_FEATURE_BITS)``, NaN
  as 0 (the weights multiply them).
* **thresholds**: the order keys of the float thresholds; a branch goes left when
  ``key(x) <= key(t)``.
* **leaf values** (and the linear model's folded weights): ``round(v * 2**SCORE_BITS)``
  (weights: ``2**LINEAR_WEIGHT_BITS``); the raw score is their integer sum (log-odds scaled
  by ``2**SCORE_BITS``), off the float raw score by at most half a unit per tree.
* **alert**: ``raw >= ALERT_RAW``, where ``ALERT_RAW = ceil(raw_threshold * 2**SCORE_BITS)``
  and ``raw_threshold`` is the raw score at which the calibrated probability reaches the
  model's threshold (``(logit(p) - b) / a``): the calibration is monotone, so no
  exponential is needed to decide. A caller that wants the probability maps
  ``raw / 2**SCORE_BITS`` through ``sigmoid(a * . + b)`` itself.

:func:`quantise` makes the integer model, :func:`raw_reference` is the reference evaluator
(Python integers, one row), :func:`raw_batch` the same arithmetic on numpy int64 for many
rows, and :func:`c_source` the C evaluator (``int64_t`` only: it compiles with
``-mgeneral-regs-only``, which forbids floating-point registers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stream.errors import ArtifactError
from stream.scoring.student import LinearModel, Student, TreeEnsemble
from stream.scoring.treekernels import MISSING_NONE

SCORE_BITS = 24
LINEAR_FEATURE_BITS = 16
LINEAR_WEIGHT_BITS = 24  # linear: products at 2**40, shifted down to 2**SCORE_BITS
CLAMP = 1 << 62
_MAGNITUDE = (1 << 63) - 1


@dataclass
class FixedModel:
    """A student in integers: tree nodes (``left == right == self`` at leaves) or weights."""

    family: str
    n_features: int
    alert_raw: int
    feature: list[int]          # trees: per node
    threshold: list[int]
    left: list[int]
    right: list[int]
    value: list[int]            # leaf values (0 at inner nodes)
    roots: list[int]
    weights: list[int]          # linear: per feature, at 2**LINEAR_WEIGHT_BITS
    bias: int                   # linear: at 2**SCORE_BITS
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the exported ``fixed_model.json``)."""
        return {"format": "txwatch-fixed-1", "family": self.family, "n_features": self.n_features,
                "feature_rule": feature_rule(self), "score_bits": SCORE_BITS,
                "linear_feature_bits": LINEAR_FEATURE_BITS, "linear_weight_bits": LINEAR_WEIGHT_BITS,
                "alert_raw": self.alert_raw, "feature": self.feature, "threshold": self.threshold,
                "left": self.left, "right": self.right, "value": self.value, "roots": self.roots,
                "weights": self.weights, "bias": self.bias, **self.meta}


def order_keys(values) -> np.ndarray:
    """The order keys of float64 values (NaN as 0): ``m`` or ``-m`` by sign, ``m`` the low 63 bits.

    >>> k = order_keys([-2.0, -0.0, 0.0, 1e-17, 1.0]); bool(all(k[:-1] <= k[1:])), int(k[1]), int(k[2])
    (True, 0, 0)
    """
    bits = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0).view(np.int64)
    magnitude = bits & _MAGNITUDE
    return np.where(bits < 0, -magnitude, magnitude)


def quantise_features(model: "FixedModel", X: np.ndarray) -> np.ndarray:
    """The model's feature rule on a float batch (order keys for trees, fixed point for linear)."""
    if model.family == "trees":
        return order_keys(X)
    scaled = np.floor(np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0) * (1 << LINEAR_FEATURE_BITS))
    return np.clip(scaled, -CLAMP, CLAMP).astype(np.int64)


def feature_rule(model: "FixedModel") -> str:
    """The feature rule in words (for reports and the generated C)."""
    if model.family == "trees":
        return ("order key of the IEEE-754 binary64 value: its low 63 bits m, as m if x >= 0 else -m "
                "(NaN as 0)")
    return f"floor(x * 2^{LINEAR_FEATURE_BITS}), NaN as 0, clamped to +-2^62"


def raw_threshold(student: Student) -> float:
    """The raw score at which the calibrated probability reaches the student's threshold."""
    p = student.threshold
    if not 0.0 < p < 1.0 or student.cal_a <= 0.0:
        raise ArtifactError("the student's threshold or calibration cannot be expressed as a raw-score cut")
    return (math.log(p / (1.0 - p)) - student.cal_b) / student.cal_a


def quantise(student: Student) -> FixedModel:
    """The integer model of ``student``."""
    impl = student.impl
    alert = math.ceil(raw_threshold(student) * (1 << SCORE_BITS))
    meta = {"model_version": student.version, "feature_names": list(student.feature_names),
            "calibration": {"a": student.cal_a, "b": student.cal_b}, "probability_threshold": student.threshold}
    if isinstance(impl, TreeEnsemble):
        if np.any(impl.missing != MISSING_NONE):
            raise ArtifactError("this student routes missing values itself; the fixed-point form "
                                "supports models that read them as 0")
        thr = order_keys(impl.threshold)
        leaf = impl.left == np.arange(len(impl.left))
        value = np.where(leaf, np.round(impl.value * (1 << SCORE_BITS)), 0).astype(np.int64)
        return FixedModel("trees", impl.n_features, alert, impl.feature.tolist(), thr.tolist(), impl.left.tolist(),
                          impl.right.tolist(), value.tolist(), impl.roots.tolist(), [], 0, meta)
    if isinstance(impl, LinearModel):
        w = np.round(impl._w * (1 << LINEAR_WEIGHT_BITS)).astype(np.int64)
        bias = int(round(impl._b * (1 << SCORE_BITS)))
        return FixedModel("linear", impl.n_features, alert, [], [], [], [], [], [], w.tolist(), bias, meta)
    raise ArtifactError(f"cannot export a {student.family!r} student")  # pragma: no cover


def raw_reference(model: FixedModel, xq: Sequence[int]) -> int:
    """The raw score of one quantised row, in Python integers only (the reference)."""
    if model.family == "linear":
        acc = 0
        for w, x in zip(model.weights, xq):
            acc += w * x
        return model.bias + (acc >> (LINEAR_WEIGHT_BITS + LINEAR_FEATURE_BITS - SCORE_BITS))
    s = 0
    feature, threshold, left, right, value = model.feature, model.threshold, model.left, model.right, model.value
    for node in model.roots:
        while left[node] != node:
            node = left[node] if xq[feature[node]] <= threshold[node] else right[node]
        s += value[node]
    return s


def raw_batch(model: FixedModel, XQ: np.ndarray) -> np.ndarray:
    """:func:`raw_reference` for many rows, in numpy int64 (same integers; tested equal)."""
    XQ = np.asarray(XQ, dtype=np.int64)
    if model.family == "linear":
        # Row by row in Python integers: int64 products could overflow where Python's do not.
        return np.array([raw_reference(model, row) for row in XQ.tolist()], dtype=np.int64)
    feature, threshold = np.asarray(model.feature), np.asarray(model.threshold, dtype=np.int64)
    left, right, value = np.asarray(model.left), np.asarray(model.right), np.asarray(model.value, dtype=np.int64)
    rows = np.arange(len(XQ))
    total = np.zeros(len(XQ), dtype=np.int64)
    for root in model.roots:
        node = np.full(len(XQ), root)
        while True:
            inner = left[node] != node
            if not inner.any():
                break
            go_left = XQ[rows, feature[node]] <= threshold[node]
            node = np.where(inner, np.where(go_left, left[node], right[node]), node)
        total += value[node]
    return total


def operations(model: FixedModel, XQ: np.ndarray) -> dict[str, float]:
    """Integer operations per event (comparisons and additions; multiplications for linear)."""
    if model.family == "linear":
        n = model.n_features
        return {"comparisons": 0.0, "additions": float(n + 1), "multiplications": float(n), "shifts": 1.0}
    left = model.left
    visits = 0
    sample = np.asarray(XQ[:2000]).tolist()
    for xq in sample:
        for node in model.roots:
            while left[node] != node:
                visits += 1
                node = left[node] if xq[model.feature[node]] <= model.threshold[node] else model.right[node]
    per = visits / max(len(sample), 1)
    return {"comparisons": round(per, 1), "additions": float(len(model.roots)), "multiplications": 0.0,
            "shifts": 0.0}


def _array(ctype: str, name: str, values: Sequence[int]) -> str:
    body = ",".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[] = {{{body}}};\n"


def c_source(model: FixedModel) -> str:
    """A C99 evaluator of ``model``: ``txwatch_raw`` and ``txwatch_alert``, integers only."""
    head = (f"/* txwatch student {model.meta['model_version']} ({model.family}), integer-only evaluator.\n"
            f" * Generated by `txwatch export --format fixed`; do not edit.\n"
            f" * Input: the {model.n_features} features in the student's order, each as\n"
            f" * {feature_rule(model)}.\n"
            f" * Output: the raw score (log-odds) times 2^{SCORE_BITS}; an alert when it is >= TXW_ALERT_RAW. */\n"
            "#include <stdint.h>\n\n"
            f"#define TXW_N_FEATURES {model.n_features}\n"
            f"#define TXW_SCORE_BITS {SCORE_BITS}\n#define TXW_ALERT_RAW INT64_C({model.alert_raw})\n\n")
    if model.family == "linear":
        shift = LINEAR_WEIGHT_BITS + LINEAR_FEATURE_BITS - SCORE_BITS
        body = (_array("int64_t", "txw_weight", model.weights)
                + f"\nint64_t txwatch_raw(const int64_t x[TXW_N_FEATURES]) {{\n"
                  f"    int64_t acc = 0;\n    for (int j = 0; j < TXW_N_FEATURES; j++) acc += txw_weight[j] * x[j];\n"
                  f"    return INT64_C({model.bias}) + (acc >> {shift});\n}}\n")
    else:
        body = (_array("uint8_t" if model.n_features < 256 else "uint16_t", "txw_feature", model.feature)
                + _array("int64_t", "txw_threshold", model.threshold)
                + _array("int32_t", "txw_left", model.left) + _array("int32_t", "txw_right", model.right)
                + _array("int64_t", "txw_value", model.value) + _array("int32_t", "txw_root", model.roots)
                + f"\nint64_t txwatch_raw(const int64_t x[TXW_N_FEATURES]) {{\n"
                  f"    int64_t s = 0;\n"
                  f"    for (int t = 0; t < {len(model.roots)}; t++) {{\n"
                  f"        int32_t n = txw_root[t];\n"
                  f"        while (txw_left[n] != n) n = x[txw_feature[n]] <= txw_threshold[n] ? txw_left[n] : txw_right[n];\n"
                  f"        s += txw_value[n];\n    }}\n    return s;\n}}\n")
    tail = "\nint txwatch_alert(const int64_t x[TXW_N_FEATURES]) { return txwatch_raw(x) >= TXW_ALERT_RAW; }\n"
    return head + body + tail
