"""The student as an ONNX graph whose output is the calibrated probability.

Built node by node with ``onnx.helper`` (no converter: the student is txwatch's own tree
arrays, not a LightGBM booster, and the graph below is exact). Everything is float64, so
onnxruntime computes what txwatch computes up to the order of additions:

``X`` (double, ``[N, n_features]``) -> ``Where(IsNaN(X), 0, X)`` (txwatch reads a missing
value as 0 in models that do not route missing values) -> raw score (``ai.onnx.ml``
``TreeEnsemble``, opset 5, one ``x <= threshold`` branch per inner node, sum over trees;
or ``MatMul`` + ``Add`` for the linear family) -> ``Sigmoid(a * raw + b)`` (the Platt
calibration) -> ``probability`` (double, ``[N, 1]``).

The model's metadata (``metadata_props``) carries the feature names in order (JSON), the
model version, the alert threshold, the family, the calibration and the feature-schema hash.
"""

from __future__ import annotations

import numpy as np
import orjson

from stream.errors import ArtifactError
from stream.scoring.student import LinearModel, Student, TreeEnsemble
from stream.scoring.treekernels import MISSING_NONE

OPSET = 21
ML_OPSET = 5
INPUT, OUTPUT = "features", "probability"


def _tree_node(ens: TreeEnsemble, helper, numpy_helper):
    """The ``TreeEnsemble`` node of a tree student (children are ONNX node or leaf indices)."""
    if np.any(ens.missing != MISSING_NONE):
        raise ArtifactError("this student routes missing values itself (a tabular model trained with "
                            "missing values); the ONNX export supports models that read them as 0")
    left, right = ens.left.tolist(), ens.right.tolist()
    is_leaf = [left[i] == i for i in range(len(left))]
    inner_index: dict[int, int] = {}
    leaf_index: dict[int, int] = {}
    roots: list[int] = []
    order: list[int] = []       # global ids of the ONNX nodes, in ONNX order
    leaves: list[int] = []      # global ids of the leaves, in ONNX leaf order
    for root in ens.roots.tolist():
        if is_leaf[root]:       # a one-leaf tree: a node whose two children are that leaf
            inner_index[-1 - root] = len(order)
            roots.append(len(order))
            order.append(-1 - root)
            leaf_index.setdefault(root, len(leaves))
            if leaf_index[root] == len(leaves):
                leaves.append(root)
            continue
        roots.append(len(order))
        stack = [root]
        while stack:
            n = stack.pop()
            if is_leaf[n]:
                if n not in leaf_index:
                    leaf_index[n] = len(leaves)
                    leaves.append(n)
                continue
            inner_index[n] = len(order)
            order.append(n)
            stack += [right[n], left[n]]
    feats, splits, tids, tleaf, fids, fleaf = [], [], [], [], [], []
    for n in order:
        if n < 0:               # the one-leaf tree's node
            leaf = -1 - n
            feats.append(0)
            splits.append(0.0)
            tids.append(leaf_index[leaf])
            fids.append(leaf_index[leaf])
            tleaf.append(1)
            fleaf.append(1)
            continue
        feats.append(int(ens.feature[n]))
        splits.append(float(ens.threshold[n]))
        for child, ids, flags in ((left[n], tids, tleaf), (right[n], fids, fleaf)):
            if is_leaf[child]:
                ids.append(leaf_index[child])
                flags.append(1)
            else:
                ids.append(inner_index[child])
                flags.append(0)
    weights = np.array([ens.value[n] for n in leaves], dtype=np.float64)
    return helper.make_node(
        "TreeEnsemble", ["clean"], ["raw"], domain="ai.onnx.ml",
        nodes_featureids=feats, nodes_splits=numpy_helper.from_array(np.array(splits, dtype=np.float64)),
        nodes_modes=numpy_helper.from_array(np.zeros(len(order), dtype=np.uint8)),  # BRANCH_LEQ
        nodes_truenodeids=tids, nodes_trueleafs=tleaf, nodes_falsenodeids=fids, nodes_falseleafs=fleaf,
        leaf_targetids=[0] * len(leaves), leaf_weights=numpy_helper.from_array(weights),
        tree_roots=roots, n_targets=1, aggregate_function=1, post_transform=0)  # SUM, no transform


def build(student: Student):
    """The ONNX ``ModelProto`` of ``student`` (checked by ``onnx.checker``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(student.feature_names)
    const = lambda name, value: numpy_helper.from_array(np.asarray(value, dtype=np.float64), name)  # noqa: E731
    initializers = [const("zero", 0.0), const("cal_a", student.cal_a), const("cal_b", student.cal_b)]
    nodes = [helper.make_node("IsNaN", [INPUT], ["missing"]),
             helper.make_node("Where", ["missing", "zero", INPUT], ["clean"])]
    impl = student.impl
    if isinstance(impl, TreeEnsemble):
        nodes.append(_tree_node(impl, helper, numpy_helper))
    elif isinstance(impl, LinearModel):
        initializers += [const("weights", impl._w.reshape(n, 1)), const("bias", impl._b)]
        nodes += [helper.make_node("MatMul", ["clean", "weights"], ["dot"]),
                  helper.make_node("Add", ["dot", "bias"], ["raw"])]
    else:  # pragma: no cover - Student refuses other families
        raise ArtifactError(f"cannot export a {student.family!r} student")
    nodes += [helper.make_node("Mul", ["raw", "cal_a"], ["scaled"]),
              helper.make_node("Add", ["scaled", "cal_b"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], [OUTPUT])]
    graph = helper.make_graph(
        nodes, "txwatch_student",
        [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, ["N", n])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, ["N", 1])],
        initializer=initializers)
    model = helper.make_model(graph, producer_name="txwatch", doc_string=__doc__.splitlines()[0],
                              opset_imports=[helper.make_opsetid("", OPSET),
                                             helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 10
    meta = {"feature_names": orjson.dumps(list(student.feature_names)).decode(),
            "model_version": student.version, "threshold": repr(student.threshold),
            "family": student.family, "calibration": orjson.dumps({"a": student.cal_a, "b": student.cal_b}).decode(),
            "feature_schema_hash": str(student.manifest.get("feature_schema_hash", ""))}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model


def session(model_bytes: bytes):
    """An onnxruntime session on one thread (the comparison is per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def score(sess, X: np.ndarray) -> np.ndarray:
    """Probabilities of a batch through onnxruntime, shape ``(n,)``."""
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(X, dtype=np.float64)})[0][:, 0]
