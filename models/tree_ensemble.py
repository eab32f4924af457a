"""The evaluator of our ONNX models: a graph of one `TreeEnsembleRegressor` or binary
`TreeEnsembleClassifier` (ONNX-ML operators, onnx.ai/onnx/operators), as `models.export` writes them, computed
with numpy as onnxruntime computes them.

What it implements, and nothing else (`UnsupportedModelError` names what a graph needs beyond it, when the
model is loaded, so a future model type is refused loudly and the agent keeps the previous one):

- one node, in the `ai.onnx.ml` domain, reading the graph's one float input and writing its outputs; no
  initializers;
- branch nodes `BRANCH_LEQ` (go to the true child when `x[feature] <= value`) and `LEAF`; a missing
  feature (NaN) goes to the true child where `nodes_missing_value_tracks_true` says so, else (NaN <= v is
  false) to the false child; `nodes_hitrates` is statistics and ignored;
- the regressor with one target and the `SUM` aggregate; the classifier with two integer labels whose
  weights all score class 0 (scikit-learn's binary boosting: the raw score of the positive class);
- `base_values` of one value (or none), added to the sum of the trees' leaf weights; `post_transform` NONE or
  LOGISTIC (1 / (1 + e^-s)).

The value computed is the one output the agent reads: the regressor's target, or the classifier's probability
of its second label (column 1 of `probabilities`, which onnxruntime computes as post_transform(s) for such a
classifier). Inputs are rounded to float32 and compared with float32 thresholds, and leaf weights are summed
tree by tree in float32, as onnxruntime does with one thread: the sums are the same to the bit; the logistic
is exact to float32, onnxruntime's approximation within ~6e-7 of it (`tests/unit/test_tree_ensemble.py`
compares the two on the shipped models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from models.onnx_reader import ML_DOMAIN, Attribute, Node, OnnxModel

REGRESSOR: Final = "TreeEnsembleRegressor"
CLASSIFIER: Final = "TreeEnsembleClassifier"
_NODE_ATTRIBUTES: Final = {
    "nodes_treeids": "ints",
    "nodes_nodeids": "ints",
    "nodes_featureids": "ints",
    "nodes_modes": "strings",
    "nodes_values": "floats",
    "nodes_truenodeids": "ints",
    "nodes_falsenodeids": "ints",
    "nodes_missing_value_tracks_true": "ints",
    "nodes_hitrates": "floats",
    "base_values": "floats",
    "post_transform": "string",
}
_ATTRIBUTES: Final = {
    REGRESSOR: {
        **_NODE_ATTRIBUTES,
        "n_targets": "int",
        "target_ids": "ints",
        "target_nodeids": "ints",
        "target_treeids": "ints",
        "target_weights": "floats",
        "aggregate_function": "string",
    },
    CLASSIFIER: {
        **_NODE_ATTRIBUTES,
        "class_ids": "ints",
        "class_nodeids": "ints",
        "class_treeids": "ints",
        "class_weights": "floats",
        "classlabels_int64s": "ints",
    },
}
_OPTIONAL: Final = {
    "nodes_missing_value_tracks_true",
    "nodes_hitrates",
    "base_values",
    "post_transform",
    "aggregate_function",
    "n_targets",
}
POST_TRANSFORMS: Final = ("NONE", "LOGISTIC")
_ROWS_PER_PASS: Final = 4096  # predict_rows bounds its working arrays: rows × trees node indices

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


class UnsupportedModelError(ValueError):
    """The graph needs an operator, attribute or value this evaluator does not implement."""


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A tree ensemble in flat arrays: node k of the whole forest (trees one after the other) tests feature
    `feature[k]` against `threshold[k]` and goes on to `next_node[3k + c]`, c = 0 when false, 1 when true,
    2 when the feature is missing; a leaf goes on to itself and holds the sum of its weights in `leaf[k]`."""

    op_type: str
    output: str  # the graph output the value is read from
    column: int  # ... and its column
    n_features: int
    feature: IndexArray
    threshold: Float32Array
    next_node: IndexArray
    leaf: Float32Array
    roots: IndexArray
    depth: int  # the longest path from a root to a leaf, in branch nodes
    base: np.float32
    post_transform: str

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def predict_rows(self, x: npt.ArrayLike) -> Float64Array:
        """The value of each row of `x` (rows × n_features, NaN for a missing feature)."""
        rows = np.asarray(x, dtype=np.float32).reshape(-1, self.n_features)
        if len(rows) <= _ROWS_PER_PASS:
            return self._pass(rows)
        return np.concatenate(
            [self._pass(rows[i : i + _ROWS_PER_PASS]) for i in range(0, len(rows), _ROWS_PER_PASS)]
        )

    def predict_one(self, x: npt.ArrayLike) -> float:
        return float(self._pass(np.asarray(x, dtype=np.float32).reshape(1, self.n_features))[0])

    def _pass(self, rows: Float32Array) -> Float64Array:
        n = len(rows)
        flat = rows.ravel()
        offsets = (np.arange(n, dtype=np.intp) * self.n_features)[:, None]
        nodes = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        for _ in range(self.depth):
            value = flat[offsets + self.feature[nodes]]
            # NaN <= t is false, so a missing value picks column 0 + 2; a present one, 0 (false) or 1 (true)
            choice = (value <= self.threshold[nodes]).view(np.int8) + 2 * np.isnan(value).view(np.int8)
            nodes = self.next_node[3 * nodes + choice]
        # leaf weights summed tree after tree in float32, as onnxruntime's one thread does
        score = np.cumsum(self.leaf[nodes], axis=1, dtype=np.float32)[:, -1] + self.base
        if self.post_transform == "LOGISTIC":
            score = _logistic(score)
        return score.astype(np.float64)


def _logistic(s: Float32Array) -> Float32Array:
    """1 / (1 + e^-s), computed in float64 (e^-|s| never overflows) and rounded to float32: within half a
    float32 step of the exact value. onnxruntime's own is an approximation within ~6e-7 of it (measured on
    the shipped models), so the two agree to that, not bit for bit."""
    e = np.exp(-np.abs(s.astype(np.float64)))
    return np.where(s < 0, e / (1.0 + e), 1.0 / (1.0 + e)).astype(np.float32)


# --- compiling a graph ------------------------------------------------------------------------------------


def compile_model(model: OnnxModel, n_features: int) -> TreeEnsemble:
    """The evaluator of `model`'s graph, or `UnsupportedModelError` saying what it needs beyond this
    module."""
    graph = model.graph
    if ML_DOMAIN not in model.opsets:
        raise UnsupportedModelError(f"the model imports no {ML_DOMAIN} operator set ({model.opsets})")
    if graph.initializers:
        raise UnsupportedModelError(f"the graph holds {len(graph.initializers)} initializers (constants)")
    if len(graph.nodes) != 1:
        ops = ", ".join(f"{n.domain or 'ai.onnx'}.{n.op_type}" for n in graph.nodes)
        raise UnsupportedModelError(f"the graph has {len(graph.nodes)} nodes ({ops}), not one tree ensemble")
    node = graph.nodes[0]
    if node.domain != ML_DOMAIN or node.op_type not in _ATTRIBUTES:
        raise UnsupportedModelError(f"operator {node.domain or 'ai.onnx'}.{node.op_type} is not implemented")
    if len(graph.inputs) != 1 or graph.inputs[0].elem_type != "float":
        raise UnsupportedModelError(
            f"the graph's inputs are {[(i.name, i.elem_type) for i in graph.inputs]}, not one float tensor"
        )
    if node.inputs != (graph.inputs[0].name,):
        raise UnsupportedModelError(f"the node reads {list(node.inputs)}, not the graph's input")
    outputs = [o.name for o in graph.outputs]
    if not set(outputs) <= set(node.outputs):
        raise UnsupportedModelError(f"graph outputs {outputs} are not all the node's {list(node.outputs)}")
    attrs = _checked_attributes(node)
    post = _string(attrs, "post_transform", "NONE")
    if post not in POST_TRANSFORMS:
        raise UnsupportedModelError(f"post_transform {post} is not implemented (only {POST_TRANSFORMS})")
    base_values = _floats(attrs, "base_values")
    if len(base_values) > 1:
        raise UnsupportedModelError(f"{len(base_values)} base_values (only one is implemented)")
    if node.op_type == REGRESSOR:
        if _int(attrs, "n_targets", 1) != 1:
            raise UnsupportedModelError(f"{_int(attrs, 'n_targets', 1)} targets (only one is implemented)")
        aggregate = _string(attrs, "aggregate_function", "SUM")
        if aggregate != "SUM":
            raise UnsupportedModelError(f"aggregate_function {aggregate} is not implemented (only SUM)")
        prefix, output, column = "target", node.outputs[0], 0
    else:
        labels = _ints(attrs, "classlabels_int64s")
        if len(labels) != 2:
            raise UnsupportedModelError(
                f"{len(labels)} class labels (only a binary classifier is implemented)"
            )
        if len(node.outputs) != 2:
            raise UnsupportedModelError(
                f"the classifier writes {list(node.outputs)}, not label, probabilities"
            )
        prefix, output, column = "class", node.outputs[1], 1
    if output not in outputs:
        raise UnsupportedModelError(f"the graph does not output {output!r}")
    ids = _ints(attrs, f"{prefix}_ids")
    if (ids != 0).any():
        what = "a second target" if prefix == "target" else "scores for the second class"
        raise UnsupportedModelError(f"weights for {what} (only class/target 0 is implemented)")
    feature, threshold, next_node, leaf, roots, depth = _forest(attrs, prefix, n_features)
    return TreeEnsemble(
        op_type=node.op_type,
        output=output,
        column=column,
        n_features=n_features,
        feature=feature,
        threshold=threshold,
        next_node=next_node,
        leaf=leaf,
        roots=roots,
        depth=depth,
        base=np.float32(base_values[0] if len(base_values) else 0.0),
        post_transform=post,
    )


def _checked_attributes(node: Node) -> dict[str, Attribute]:
    known = _ATTRIBUTES[node.op_type]
    unknown = sorted(set(node.attributes) - set(known))
    if unknown:
        raise UnsupportedModelError(f"{node.op_type} attributes {unknown} are not implemented")
    for name, kind in known.items():
        attribute = node.attributes.get(name)
        if attribute is None:
            if name not in _OPTIONAL:
                raise UnsupportedModelError(f"{node.op_type} without its attribute {name}")
        elif attribute.kind != kind:
            raise UnsupportedModelError(f"{node.op_type} attribute {name} is {attribute.kind}, not {kind}")
    return node.attributes


def _ints(attrs: dict[str, Attribute], name: str) -> npt.NDArray[np.int64]:
    a = attrs.get(name)
    return np.frombuffer(a.ints, dtype=np.int64) if a is not None else np.empty(0, dtype=np.int64)


def _floats(attrs: dict[str, Attribute], name: str) -> Float32Array:
    a = attrs.get(name)
    return np.frombuffer(a.floats, dtype=np.float32) if a is not None else np.empty(0, dtype=np.float32)


def _int(attrs: dict[str, Attribute], name: str, default: int) -> int:
    a = attrs.get(name)
    return a.i if a is not None else default


def _string(attrs: dict[str, Attribute], name: str, default: str) -> str:
    a = attrs.get(name)
    return a.s.decode("utf-8", "replace") if a is not None else default


_Forest = tuple[IndexArray, Float32Array, IndexArray, Float32Array, IndexArray, int]
_LEAF, _BRANCH_LEQ = 0, 1
_MAX_ID: Final = 1 << 31
_MODES: Final = {b"LEAF": _LEAF, b"BRANCH_LEQ": _BRANCH_LEQ}


class _NodeIndex:
    """(tree id, node id) → position in the node attributes, for arrays of both."""

    def __init__(self, tree_ids: npt.NDArray[np.int64], node_ids: npt.NDArray[np.int64]) -> None:
        if len(tree_ids) and (tree_ids.min() < 0 or node_ids.min() < 0):
            raise UnsupportedModelError("negative tree or node ids")
        if len(tree_ids) and max(tree_ids.max(), node_ids.max()) >= _MAX_ID:  # keys below stay in int64
            raise UnsupportedModelError(f"tree or node ids of {_MAX_ID} or more")
        self._span = int(node_ids.max()) + 1 if len(node_ids) else 1
        keys = tree_ids * self._span + node_ids
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]
        twice = np.flatnonzero(self._keys[1:] == self._keys[:-1])
        if len(twice):
            k = self._order[twice[0]]
            raise UnsupportedModelError(f"tree {tree_ids[k]} has node {node_ids[k]} twice")

    def find(self, tree_ids: npt.NDArray[np.int64], node_ids: npt.NDArray[np.int64]) -> IndexArray:
        """Positions of the given nodes; -1 for a node that does not exist."""
        keys = tree_ids * self._span + node_ids
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = (self._keys[at] == keys) & (node_ids >= 0) & (node_ids < self._span)
        return np.where(found, self._order[at], -1).astype(np.intp)


def _forest(attrs: dict[str, Attribute], prefix: str, n_features: int) -> _Forest:
    """The flat arrays of `TreeEnsemble` from the node and weight attributes, every reference checked."""
    tree_ids = _ints(attrs, "nodes_treeids")
    node_ids = _ints(attrs, "nodes_nodeids")
    features = _ints(attrs, "nodes_featureids")
    modes = attrs["nodes_modes"].strings
    thresholds = _floats(attrs, "nodes_values")
    true_ids = _ints(attrs, "nodes_truenodeids")
    false_ids = _ints(attrs, "nodes_falsenodeids")
    n = len(tree_ids)
    missing_true = _ints(attrs, "nodes_missing_value_tracks_true")
    if "nodes_missing_value_tracks_true" not in attrs:
        missing_true = np.zeros(n, dtype=np.int64)
    hitrates = _floats(attrs, "nodes_hitrates") if "nodes_hitrates" in attrs else thresholds
    if n == 0:
        raise UnsupportedModelError("a tree ensemble without nodes")
    columns = (node_ids, features, modes, thresholds, true_ids, false_ids, missing_true, hitrates)
    if any(len(c) != n for c in columns):
        raise UnsupportedModelError(f"the node attributes differ in length ({[len(c) for c in columns]})")
    index = _NodeIndex(tree_ids, node_ids)
    unknown = set(modes) - set(_MODES)
    if unknown:
        names = sorted(m.decode("utf-8", "replace") for m in unknown)
        raise UnsupportedModelError(f"node modes {names} are not implemented (only BRANCH_LEQ and LEAF)")
    mode = np.fromiter((_MODES[m] for m in modes), dtype=np.int8, count=n)
    is_leaf = mode == _LEAF
    branch = np.flatnonzero(~is_leaf)
    bad = branch[(features[branch] < 0) | (features[branch] >= n_features)]
    if len(bad):
        raise UnsupportedModelError(f"a node tests feature {features[bad[0]]}, the input has {n_features}")
    true_k = index.find(tree_ids[branch], true_ids[branch])
    false_k = index.find(tree_ids[branch], false_ids[branch])
    dangling = branch[(true_k < 0) | (false_k < 0)]
    if len(dangling):
        k = dangling[0]
        raise UnsupportedModelError(f"tree {tree_ids[k]}: node {node_ids[k]} branches to no node")
    next_node = np.repeat(np.arange(n, dtype=np.intp), 3).reshape(n, 3)  # a leaf goes on to itself
    next_node[branch, 0] = false_k
    next_node[branch, 1] = true_k
    next_node[branch, 2] = np.where(missing_true[branch] != 0, true_k, false_k)
    feature = np.where(is_leaf, 0, features).astype(np.intp)
    weight_trees, weight_nodes = _ints(attrs, f"{prefix}_treeids"), _ints(attrs, f"{prefix}_nodeids")
    weights = _floats(attrs, f"{prefix}_weights")
    if not len(weight_trees) == len(weight_nodes) == len(weights) == len(_ints(attrs, f"{prefix}_ids")):
        raise UnsupportedModelError(f"the {prefix} weight attributes differ in length")
    weighted = index.find(weight_trees, weight_nodes)
    not_leaf = (weighted < 0) | ~is_leaf[np.maximum(weighted, 0)]
    if not_leaf.any():
        i = int(np.flatnonzero(not_leaf)[0])
        tree, node = weight_trees[i], weight_nodes[i]
        raise UnsupportedModelError(f"a weight on tree {tree} node {node}, which is not a leaf")
    leaf = np.zeros(n, dtype=np.float32)
    np.add.at(leaf, weighted, weights)  # a leaf's weights in float32, in their order
    child = np.zeros(n, dtype=bool)
    child[true_k] = child[false_k] = True
    roots = np.flatnonzero(~child).astype(np.intp)  # in the order of the trees, as onnxruntime sums them
    ordered = np.sort(tree_ids)  # (np.unique would import numpy.ma, ~2 MB, into the agent)
    n_trees = 1 + int(np.count_nonzero(ordered[1:] != ordered[:-1]))
    if len(roots) != n_trees:
        raise UnsupportedModelError(f"{len(roots)} roots in {n_trees} trees")
    depth = _depth(next_node, is_leaf, roots)
    return feature, thresholds.copy(), next_node.ravel(), leaf, roots, depth


def _depth(next_node: IndexArray, is_leaf: npt.NDArray[np.bool_], roots: IndexArray) -> int:
    """The most branch nodes on a path from a root to a leaf; `UnsupportedModelError` when the trees loop,
    share nodes or hold nodes no root reaches."""
    n = len(is_leaf)
    visits = np.zeros(n, dtype=np.intp)
    level = roots
    depth = -1
    while len(level):
        visits[level] += 1  # `level` holds each node once
        if visits[level].max() > 1:
            raise UnsupportedModelError("the trees share nodes or loop")
        reached = np.zeros(n, dtype=bool)
        reached[next_node[level[~is_leaf[level]], :2]] = True
        level = np.flatnonzero(reached)
        depth += 1
    if (visits == 0).any():
        raise UnsupportedModelError(f"{int((visits == 0).sum())} nodes are reached from no root")
    return depth
