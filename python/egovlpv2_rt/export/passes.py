"""Passes and checks on exported ONNX graphs (``onnx.ModelProto``, edited in place).

- :func:`prescale_attention` moves a post-MatMul attention scale (``MatMul -> Div(c)`` or
  ``Mul(c)``, as the RoBERTa self-attention writes it) onto the query, so that every attention
  reads ``MatMul(q * s, K^T) [-> Add(mask)] -> Softmax -> MatMul``: the form TensorRT's fused
  attention requires.
- :func:`cast_precision` turns a float32 graph into a float16 or bfloat16 one (weights,
  constants and casts), keeping chosen ops (LayerNormalization by default) in float32 and the
  graph's inputs and outputs in float32. TensorRT's strongly typed networks take the types
  written in the graph, so this is how an engine's precision is chosen.
- :func:`eliminate_dead_nodes` drops nodes no graph output depends on.
- :func:`nonstandard_nodes` and :func:`attention_patterns` / :func:`check_attention_patterns`
  are the structural checks the exporter (and the tests) run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "PRECISIONS",
    "STANDARD_DOMAINS",
    "AttentionMatch",
    "attention_patterns",
    "cast_precision",
    "check_attention_patterns",
    "default_keep_float32",
    "eliminate_dead_nodes",
    "nonstandard_nodes",
    "prescale_attention",
    "rename_dims",
]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
PRECISIONS = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_FP16_MAX = float(np.finfo(np.float16).max)


# ------------------------------------------------------------------------------ graph index


class _Index:
    """Producers, consumers and constants of one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a Constant node's output."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name == "value_float":
                    return np.array(attr.f, np.float32)
                if attr.name == "value_floats":
                    return np.array(list(attr.floats), np.float32)
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        # bfloat16 arrays (ml_dtypes) have dtype kind "V", not "f".
        if (
            value is None
            or value.size != 1
            or not (value.dtype.kind == "f" or value.dtype.name == "bfloat16")
        ):
            return None
        return float(value.reshape(()).astype(np.float32))

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]


class _Namer:
    """Fresh value names that collide with nothing in the graph (nor with each other)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {o for n in graph.node for o in n.output}
        self.taken |= {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.taken |= {o.name for o in graph.output}

    def __call__(self, stem: str) -> str:
        k = 0
        while f"{stem}_{k}" in self.taken:
            k += 1
        name = f"{stem}_{k}"
        self.taken.add(name)
        return name


def _key(node: onnx.NodeProto) -> tuple[str, ...]:
    """Identity of a node (outputs are unique in SSA form). Not ``id()``: protobuf may hand
    out a new wrapper object on every access to a repeated field."""
    return (node.name, *node.output)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (edits that insert nodes append them)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            names = ", ".join(n.name or n.op_type for n in rest[:5])
            raise ValueError(f"graph has a cycle or a dangling input near: {names}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


# ------------------------------------------------------------------------------ checks


def nonstandard_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes (in the graph, its subgraphs and local functions) whose domain is not a standard
    ONNX domain, plus the local functions themselves, as ``"domain::op (name)"`` strings."""
    found: list[str] = []

    def visit(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            if node.domain not in STANDARD_DOMAINS:
                found.append(f"{node.domain}::{node.op_type} ({node.name})")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g.node)
                for g in attr.graphs:
                    visit(g.node)

    visit(model.graph.node)
    for fn in model.functions:
        found.append(f"function {fn.domain}::{fn.name}")
        visit(fn.node)
    return found


@dataclass
class AttentionMatch:
    """One Softmax and the attention chain around it.

    ``bmm1``/``bmm2``: the MatMul before / after the Softmax; ``mask_add``: the Add of an
    additive mask between them (or None); ``q_scale``: the ``Mul(q, scalar)`` feeding ``bmm1``
    (pre-scaled query); ``ranks``: ranks of q, K^T and V when shape inference knows them;
    ``problems``: why this Softmax is not in the fusable form (empty if it is).
    """

    softmax: str
    bmm1: str | None = None
    bmm2: str | None = None
    mask_add: str | None = None
    q_scale: str | None = None
    scale: float | None = None
    ranks: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def fusable(self) -> bool:
        return not self.problems


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return {}
    out: dict[str, int] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = len(t.shape.dim)
    return out


def attention_patterns(model: onnx.ModelProto) -> list[AttentionMatch]:
    """Every Softmax of the main graph, matched against TensorRT's fusable attention form:
    ``MatMul(Mul(q, scalar), K^T) [-> Add(mask)] -> Softmax(axis=-1) -> MatMul(., V)``, with
    each intermediate read only by the next node and q, K^T, V of rank 4 ([B, heads, S, d])."""
    index = _Index(model.graph)
    ranks = _ranks(model)
    matches = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or node.domain not in STANDARD_DOMAINS:
            continue
        m = AttentionMatch(node.name or node.output[0])
        matches.append(m)
        axis = _attr(node, "axis", -1)
        in_rank = ranks.get(node.input[0])
        if axis != -1 and not (in_rank is not None and axis == in_rank - 1):
            m.problems.append(f"softmax axis is {axis}, not the last axis")
        src = index.producer.get(node.input[0])
        if src is not None and src.op_type == "Add":
            m.mask_add = src.name or src.output[0]
            if index.single_consumer(src.output[0]) is None:
                m.problems.append("the masked scores are read by more than the Softmax")
            mm = [index.producer.get(i) for i in src.input]
            cands = [p for p in mm if p is not None and p.op_type in ("MatMul", "Div", "Mul")]
            src = cands[0] if cands else None
        if src is not None and src.op_type in ("Div", "Mul"):
            before = index.producer.get(src.input[0])
            if before is not None and before.op_type == "MatMul":
                m.problems.append(
                    "the query is not pre-scaled: the scale is applied after "
                    "the scores MatMul (prescale_attention rewrites it)"
                )
                continue
        if src is None or src.op_type != "MatMul":
            m.problems.append(
                "the Softmax input is not a MatMul (or MatMul + mask Add); "
                f"found {src.op_type if src is not None else 'a graph input'}"
            )
        else:
            m.bmm1 = src.name
            if index.single_consumer(src.output[0]) is None:
                m.problems.append("the scores MatMul output is read by more than one node")
            q_src = index.producer.get(src.input[0])
            scale = None
            if q_src is not None and q_src.op_type == "Mul":
                scalars = [index.scalar(i) for i in q_src.input]
                scale = next((s for s in scalars if s is not None), None)
            if q_src is None or scale is None:  # (scale is None whenever q_src is)
                m.problems.append(
                    "the query is not pre-scaled (no Mul by a scalar before the scores MatMul)"
                )
            else:
                m.q_scale, m.scale = q_src.name, scale
            for role, name in (("q", src.input[0]), ("k_t", src.input[1])):
                if name in ranks:
                    m.ranks[role] = ranks[name]
        users = index.consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != node.output[0]:
            m.problems.append(
                "the Softmax output is not read by exactly one MatMul (as its first operand)"
            )
        else:
            m.bmm2 = users[0].name
            if users[0].input[1] in ranks:
                m.ranks["v"] = ranks[users[0].input[1]]
        bad = {k: r for k, r in m.ranks.items() if r != 4}
        if bad:
            m.problems.append(f"operands are not 4-D [B, heads, S, d]: ranks {bad}")
    return matches


def check_attention_patterns(
    model: onnx.ModelProto, *, expected: int | None = None
) -> list[AttentionMatch]:
    """Raise ``ValueError`` unless every Softmax is a fusable attention (and, if given, there
    are exactly ``expected`` of them). Returns the matches."""
    matches = attention_patterns(model)
    bad = [m for m in matches if not m.fusable]
    if bad:
        lines = [f"{m.softmax}: {'; '.join(m.problems)}" for m in bad[:5]]
        raise ValueError(
            f"{len(bad)} of {len(matches)} attention subgraphs are not in "
            "TensorRT's fusable form: " + " | ".join(lines)
        )
    if expected is not None and len(matches) != expected:
        raise ValueError(f"expected {expected} attention subgraphs, found {len(matches)}")
    return matches


# ------------------------------------------------------------------------------ rewrites


def prescale_attention(model: onnx.ModelProto) -> int:
    """Rewrite ``MatMul(q, Kt) -> Div(c) | Mul(c) -> [Add(mask)] -> Softmax`` into
    ``MatMul(Mul(q, 1/c | c), Kt) -> [Add(mask)] -> Softmax``. Returns the number rewritten.

    Exact in real arithmetic; in floating point the result differs by rounding only
    (the scale is applied before instead of after the dot products)."""
    graph = model.graph
    index = _Index(graph)
    fresh = _Namer(graph)
    rewritten = 0
    removed: set[tuple[str, ...]] = set()
    added: list[onnx.NodeProto] = []
    extra_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        src = index.producer.get(node.input[0])
        if src is not None and src.op_type == "Add":
            users = index.single_consumer(src.output[0])
            cands = [index.producer.get(i) for i in src.input]
            src = (
                next((p for p in cands if p is not None and p.op_type in ("Div", "Mul")), None)
                if users is not None
                else None
            )
        if src is None or src.op_type not in ("Div", "Mul"):
            continue
        scale_node = src
        factor = index.scalar(scale_node.input[1])
        if factor is None or factor == 0.0:
            continue
        mm = index.producer.get(scale_node.input[0])
        if mm is None or mm.op_type != "MatMul" or index.single_consumer(mm.output[0]) is None:
            continue
        if index.single_consumer(scale_node.output[0]) is None:
            continue
        s = 1.0 / factor if scale_node.op_type == "Div" else factor
        const = index.constant(scale_node.input[1])
        assert const is not None
        init_name, q_scaled = fresh("attn_q_scale"), fresh("attn_q_scaled")
        extra_inits.append(numpy_helper.from_array(np.array(s, dtype=const.dtype), init_name))
        added.append(
            helper.make_node(
                "Mul", [mm.input[0], init_name], [q_scaled], name=f"{mm.name or 'matmul'}_prescale"
            )
        )
        mm.input[0] = q_scaled
        # The MatMul now produces what the scale node produced.
        for consumer in index.consumers.get(scale_node.output[0], []):
            for k, name in enumerate(consumer.input):
                if name == scale_node.output[0]:
                    consumer.input[k] = mm.output[0]
        removed.add(_key(scale_node))
        rewritten += 1
    if rewritten:
        kept = [n for n in graph.node if _key(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept + added)
        graph.initializer.extend(extra_inits)
        _toposort(graph)
    return rewritten


def eliminate_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes and initializers no graph output depends on. Returns nodes removed."""
    graph = model.graph
    live: set[str] = {o.name for o in graph.output}
    keep: set[tuple[str, ...]] = set()
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            keep.add(_key(node))
            live.update(i for i in node.input if i)
            for attr in node.attribute:  # outer names read by subgraphs
                for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(
                    attr.graphs
                ):
                    live.update(i for n in g.node for i in n.input)
    before = len(graph.node)
    kept = [n for n in graph.node if _key(n) in keep]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return before - len(kept)


def rename_dims(model: onnx.ModelProto, names: dict[str, dict[int, str]]) -> None:
    """Name dynamic dims of graph inputs/outputs: ``{"video": {0: "batch"}}``. Other values
    carrying the old symbolic names are renamed consistently."""
    mapping: dict[str, str] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        for axis, new in names.get(vi.name, {}).items():
            dim = vi.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_param") and dim.dim_param != new:
                mapping[dim.dim_param] = new
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        for dim in t.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


# ------------------------------------------------------------------------------ precision


def _convert_tensor(t: onnx.TensorProto, target: int) -> onnx.TensorProto:
    arr = numpy_helper.to_array(t).astype(np.float32)
    if target == TensorProto.FLOAT16:
        # Clamp first: finfo(float32).min (the additive mask) must stay finite, or 0 * -inf
        # gives NaN where the mask is 0.
        out = numpy_helper.from_array(
            np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16), t.name
        )
    else:
        out = _bf16_tensor(arr, t.name)
    return out


def _bf16_tensor(arr: np.ndarray, name: str) -> onnx.TensorProto:
    """float32 -> bfloat16 TensorProto, round to nearest even (as torch does)."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    nan = np.isnan(arr)
    upper = np.where(nan, np.uint32(0x7FC00000), rounded) >> 16
    return helper.make_tensor(
        name, TensorProto.BFLOAT16, list(arr.shape), upper.astype(np.uint16).tobytes(), raw=True
    )


def default_keep_float32(model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """Ops kept in float32: LayerNormalization (its statistics overflow float16 easily), and
    for bfloat16 below opset 22 also Conv, whose ONNX schema gains bfloat16 only in opset 22
    (it is the patch embedding: one small layer)."""
    keep: tuple[str, ...] = ("LayerNormalization",)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if precision == "bf16" and opset < 22:
        keep += ("Conv",)
    return keep


def cast_precision(
    model: onnx.ModelProto, precision: str, *, keep_float32: Sequence[str] | None = None
) -> onnx.ModelProto:
    """Convert a float32 graph to ``precision`` (``"fp32"`` returns it unchanged).

    Float32 initializers and Constant values become the target type (float16 values are
    clamped to its finite range), ``Cast(to=float)`` becomes ``Cast(to=target)``; nodes whose
    op type is in ``keep_float32`` (default :func:`default_keep_float32`; ops whose inputs
    are all floating point) compute in float32 between Casts, and weights read only by them
    stay float32. Graph inputs and outputs keep float32: a Cast follows each float input and
    precedes each float output. Edits in place and returns ``model``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    target = PRECISIONS[precision]
    if target == TensorProto.FLOAT:
        return model
    if keep_float32 is None:
        keep_float32 = default_keep_float32(model, precision)
    graph = model.graph
    index = _Index(graph)
    fresh = _Namer(graph)
    kept_nodes = [n for n in graph.node if n.op_type in keep_float32]
    kept_ids = {_key(n) for n in kept_nodes}
    float_inits = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    # Initializers read only by float32-kept nodes stay float32.
    fp32_inits = {
        name
        for name in float_inits
        if all(_key(c) in kept_ids for c in index.consumers.get(name, []))
    }

    new_inits = []
    for t in graph.initializer:
        if t.name in float_inits and t.name not in fp32_inits:
            new_inits.append(_convert_tensor(t, target))
        else:
            new_inits.append(t)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)

    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_convert_tensor(attr.t, target))
                elif attr.name in ("value_float", "value_floats"):
                    vals = np.array(
                        [attr.f] if attr.name == "value_float" else list(attr.floats), np.float32
                    )
                    shape = [] if attr.name == "value_float" else [len(vals)]
                    t = _convert_tensor(numpy_helper.from_array(vals.reshape(shape), "v"), target)
                    node.ClearField("attribute")
                    node.attribute.append(helper.make_attribute("value", t))
                    break
        elif node.op_type == "Cast" and _attr(node, "to") == TensorProto.FLOAT:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = target
        elif node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_convert_tensor(attr.t, target))
        elif node.op_type in (
            "RandomNormal",
            "RandomUniform",
            "EyeLike",
            "RandomNormalLike",
            "RandomUniformLike",
            "Bernoulli",
        ):
            raise ValueError(f"cast_precision: unsupported op {node.op_type} in the graph")

    added: list[onnx.NodeProto] = []
    # float32 islands: cast non-fp32 inputs up and the outputs back down.
    for node in kept_nodes:
        for k, name in enumerate(node.input):
            if not name or name in fp32_inits:
                continue
            up = fresh(f"{name}_fp32")
            added.append(
                helper.make_node("Cast", [name], [up], to=TensorProto.FLOAT, name=f"{up}_cast")
            )
            node.input[k] = up
        for k, name in enumerate(node.output):
            if not name:
                continue
            raw = fresh(f"{name}_fp32_out")
            node.output[k] = raw
            added.append(
                helper.make_node("Cast", [raw], [name], to=target, name=f"{name}_cast_down")
            )

    # Graph inputs and outputs stay float32.
    for vi in graph.input:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT or vi.name in float_inits:
            continue
        inner = fresh(f"{vi.name}_{precision}")
        for node in list(graph.node) + added:
            for k, name in enumerate(node.input):
                if name == vi.name:
                    node.input[k] = inner
        added.append(
            helper.make_node("Cast", [vi.name], [inner], to=target, name=f"{vi.name}_cast_in")
        )
    for vi in graph.output:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = fresh(f"{vi.name}_{precision}")
        for node in list(graph.node) + added:
            for k, name in enumerate(node.output):
                if name == vi.name:
                    node.output[k] = inner
        added.append(
            helper.make_node(
                "Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{vi.name}_cast_out"
            )
        )
    graph.node.extend(added)
    # Intermediate type annotations are stale now; shape inference recomputes them.
    del graph.value_info[:]
    _toposort(graph)
    return model
