"""Speed-aware planning: keep in float the Conv/MatMul/Gemm nodes that would run slower in integer
on the target CPU kind, with the QuantizeLinear/DequantizeLinear and layout conversions each
choice brings.

On x86 CPUs without VNNI, onnxruntime's integer kernels are slower than its float ones for
depthwise and grouped convolutions, convolutions over few channels and small MatMuls (measured:
quantize/costs/avx2.json, from `quantcli measure-costs`). Where integer is slower, a static plan
that quantizes every node makes a model slower than FP32.

The decision reads a cost table shipped with the package, measured per CPU kind, never live
timings, so a plan does not depend on the converting host and a rerun is byte-identical. For each
candidate node it estimates its time in float and in integer (the nearest measured shape of its op
class, scaled by multiply-accumulates); each tensor that crosses between a float and an integer node
costs a QuantizeLinear or DequantizeLinear (with the NHWC/NCHW transposes onnxruntime adds there),
and an integer convolution whose output a Reshape/Transpose/Flatten reads pays the layout
conversion onnxruntime inserts before it. Choosing each node's precision to minimise the total is
a binary labelling with a penalty per differing neighbour pair: a minimum s-t cut finds the exact
optimum of this model (Kolmogorov & Zabih, "What energy functions can be minimized via graph cuts?").

A target whose kind has no table is not planned for speed (said in the report); target `any`
keeps float where integer is slower on any kind that has a table. A table measured on the CPU a
model will run on (`quantcli measure-costs`, quantize/cost_measure.py) and given with
`convert --cost-table FILE` takes the place of the shipped one of its kind (or of the one missing):
still no live timing at conversion, and the plan's reasons name the file.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from importlib import resources
from pathlib import Path

import onnx

from quantcli.cpu import TABLE_KINDS
from quantcli.graph import GraphIndex, attr
from quantcli.quantize.params import QType
from quantcli.quantize.plan import INT8, QuantPlan
from quantcli.quantize.rules import Kind, rule_for

KINDS_OF_TARGET = {"any": TABLE_KINDS, **{kind: (kind,) for kind in TABLE_KINDS}}
# integer kernels that can return float (MatMulIntegerToFloat, QGemm): a float reader of their
# output needs no DequantizeLinear
FLOAT_OUTPUT_OPS = ("MatMul", "Gemm")
LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
# the op classes of the table, and what a report calls them
CONV_CLASSES = {
    "pointwise": "pointwise 1x1 Conv",
    "dense3": "Conv",
    "depthwise3": "depthwise Conv",
    "depthwise5": "depthwise Conv",
    "grouped1": "grouped Conv",
    "grouped3": "grouped Conv",
}


@dataclass(frozen=True, eq=False)
class CostTable:
    """Measured float and integer times of op classes on one CPU kind (`quantcli measure-costs`)."""

    kind: str
    measured: dict
    ops: dict
    layout: dict
    source: str = ""  # the file a user gave (--cost-table); "" for a shipped table

    @property
    def label(self) -> str:
        m = self.measured
        where = f", {self.source}" if self.source else ""
        return f"{self.kind} (onnxruntime {m.get('onnxruntime', '?')}, {m.get('date', '?')}{where})"

    @classmethod
    def from_dict(cls, data: object, source: str = "") -> CostTable:
        """A table from its JSON (`quantcli measure-costs`); ValueError saying what is wrong."""
        if not isinstance(data, dict) or data.get("schema") != 1:
            raise ValueError("no schema 1 table: write one with quantcli measure-costs")
        kind, ops, layout = data.get("kind"), data.get("ops"), data.get("layout")
        if kind not in TABLE_KINDS:
            raise ValueError(f"kind {kind!r}: not one of {', '.join(TABLE_KINDS)}")
        if not isinstance(ops, dict) or not ops:
            raise ValueError("no 'ops' timings")
        for op_class, rows in ops.items():
            if op_class not in (*CONV_CLASSES, "MatMul"):
                raise ValueError(f"unknown op class {op_class!r}")
            keys = ("m", "k") if op_class == "MatMul" else ("c", "hw")
            needed = (*keys, "macs", "elements", "float_us", "int_us", "crossing_us")
            if not isinstance(rows, list) or not rows:
                raise ValueError(f"no timings for {op_class}")
            for row in rows:
                shape, times = needed[:4], needed[4:]
                if not (
                    isinstance(row, dict)
                    and all(_positive(row.get(k)) for k in shape)
                    and all(isinstance(row.get(k), (int, float)) for k in times)
                ):
                    raise ValueError(f"a {op_class} timing lacks one of {', '.join(needed)}")
        if not isinstance(layout, dict) or not all(
            isinstance(layout.get(k), (int, float)) for k in ("float_ns", "int_ns")
        ):
            raise ValueError("no 'layout' timings (float_ns, int_ns)")
        measured = data.get("measured") if isinstance(data.get("measured"), dict) else {}
        return cls(kind, measured, ops, layout, source)

    def times(self, op_class: str, features: tuple[float, float], macs: float) -> tuple[float, float]:
        """(float, integer) microseconds of a node: the nearest measured shape of its class (in log
        space of its two features), scaled by its multiply-accumulates."""
        rows = self.ops[op_class]
        keys = ("m", "k") if op_class == "MatMul" else ("c", "hw")

        def distance(row: dict) -> float:
            return sum(
                (math.log2(max(f, 1)) - math.log2(row[k])) ** 2 for f, k in zip(features, keys, strict=True)
            )

        row = min(rows, key=distance)
        scale = macs / row["macs"]
        return row["float_us"] * scale, row["int_us"] * scale

    def crossing_us(self, elements: int, op_class: str) -> float:
        """One crossing between float and integer of a tensor of `elements` values next to a node
        of `op_class` (a Q or DQ, with the layout conversions on both sides: onnxruntime's NHWC
        transposes around integer convolutions, NCHWc reorders around float ones), as measured
        around a lone integer node between float ones: the median at each measured size (all
        convolution classes together, MatMul apart; never below a smaller size's), interpolated in
        log space, proportional beyond the largest."""
        points = self._crossings["MatMul" if op_class == "MatMul" else "Conv"]
        n = max(elements, 1)
        if n <= points[0][0]:
            return points[0][1]
        if n >= points[-1][0]:
            return points[-1][1] * n / points[-1][0]
        (n0, u0), (n1, u1) = next(
            (a, b) for a, b in zip(points, points[1:], strict=False) if a[0] <= n <= b[0]
        )
        w = (math.log(n) - math.log(n0)) / (math.log(n1) - math.log(n0))
        return math.exp((1 - w) * math.log(u0) + w * math.log(u1))

    @cached_property
    def _crossings(self) -> dict[str, list[tuple[int, float]]]:
        by: dict[str, dict[int, list[float]]] = {"Conv": {}, "MatMul": {}}
        for op_class, rows in self.ops.items():
            family = by["MatMul" if op_class == "MatMul" else "Conv"]
            for r in rows:
                family.setdefault(r["elements"], []).append(r["crossing_us"])
        out: dict[str, list[tuple[int, float]]] = {}
        for family, sizes in by.items():
            points, floor = [], 0.05
            for n, us in sorted(sizes.items()):  # a larger tensor never costs less (noise aside)
                floor = max(floor, statistics.median(us))
                points.append((n, floor))
            out[family] = points
        return out

    def layout_us(self, elements: int) -> float:
        """The extra cost of a Reshape/Transpose/Flatten on an integer convolution's output."""
        return max(self.layout["int_ns"] - self.layout["float_ns"], 0.0) * elements / 1e3


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


@cache
def load_table(kind: str) -> CostTable | None:
    """The shipped table of a CPU kind, or None where none was measured."""
    path = resources.files("quantcli.quantize") / "costs" / f"{kind}.json"
    if not path.is_file():
        return None
    return CostTable.from_dict(json.loads(path.read_text()))


def read_table(path: Path, target: str) -> CostTable:
    """A table a user measured (`quantcli convert --cost-table FILE`), for a kind `target` covers;
    a file that is not one is a BadDataError, a kind the target does not run on a UsageError."""
    from quantcli.errors import BadDataError, UsageError

    try:
        table = CostTable.from_dict(json.loads(Path(path).read_text()), source=Path(path).name)
    except OSError as exc:
        raise BadDataError(f"{path}: cannot read the cost table ({exc.strerror or exc})") from None
    except ValueError as exc:  # json.JSONDecodeError is one
        raise BadDataError(f"{path}: not a quantcli cost table ({str(exc).splitlines()[0]})") from None
    kinds = KINDS_OF_TARGET.get(target, ())
    if table.kind not in kinds:
        raise UsageError(
            f"--cost-table {path} was measured on {table.kind}; --target-cpu {target} runs on "
            f"{', '.join(kinds)}: choose --target-cpu {table.kind} or any"
        )
    return table


def tables_for(target: str, given: CostTable | None = None) -> tuple[list[CostTable], list[str]]:
    """The tables that decide for `target` (`given` in place of the shipped table of its kind),
    and the kinds it covers that have none."""
    tables, missing = [], []
    for kind in KINDS_OF_TARGET.get(target, ()):
        table = given if given is not None and given.kind == kind else load_table(kind)
        if table is None:
            missing.append(kind)
        else:
            tables.append(table)
    return tables, missing


@dataclass
class _Node:
    name: str
    op_class: str
    what: str  # "depthwise 3x3 Conv, 32->32 channels at 56x56"
    features: tuple[float, float]
    macs: float
    layout_elements: int = 0  # elements of its output a layout op reads (an integer Conv's NHWC output)
    # tensors whose QuantizeLinear/DequantizeLinear it needs while float, next to fixed INT8 nodes
    float_crossings: list[int] = field(default_factory=list)


@dataclass
class _Problem:
    """The candidates, the pairs of candidates joined by a tensor (its size), and the tensors on
    the float side of the graph that need a Q/DQ if any of the candidates reaching them is integer."""

    nodes: dict[str, _Node]
    pairs: dict[tuple[str, str], int]
    shared: dict[str, tuple[int, set[str]]]  # tensor -> (size, candidates that make it cross when integer)


def _elements(dims: list[int | None] | None) -> int | None:
    if not dims:
        return None
    return math.prod(d if d else 1 for d in dims)


def _describe(node: onnx.NodeProto, index: GraphIndex) -> tuple[str, str, tuple[float, float], float] | None:
    """(op class, description, features, MACs) of a Conv with a constant weight or a MatMul/Gemm
    whose shapes are known (unknown dimensions count as 1: batch 1); None for anything else."""
    if node.op_type == "Conv":
        w = index.dims(node.input[1]) if len(node.input) > 1 else None
        out = index.dims(node.output[0])
        if node.input[1] not in index.initializers or not w or len(w) != 4 or not out or len(out) != 4:
            return None
        c_out, c_in_g, kh, kw = w
        groups = attr(node, "group", 1)
        c_in = c_in_g * groups
        hw = (out[2] or 1) * (out[3] or 1)
        macs = (out[0] or 1) * c_out * c_in_g * kh * kw * hw
        k = max(kh, kw)
        if groups == 1:
            op_class = "pointwise" if k == 1 else "dense3"
            name = "pointwise 1x1 Conv" if k == 1 else f"{kh}x{kw} Conv"
        elif c_in_g == 1:
            op_class = "depthwise3" if k <= 3 else "depthwise5"
            name = f"depthwise {kh}x{kw} Conv"
        else:
            op_class = "grouped1" if k == 1 else "grouped3"
            name = f"grouped {kh}x{kw} Conv ({groups} groups)"
        channels = math.sqrt(c_in * c_out)
        what = f"{name}, {c_in}->{c_out} channels at {out[2] or '?'}x{out[3] or '?'}"
        return op_class, what, (channels, math.sqrt(hw)), macs
    if node.op_type in ("MatMul", "Gemm"):
        x = index.dims(node.input[0])
        w = index.dims(node.input[1]) if len(node.input) > 1 else None
        if not x or not w or len(x) < 2 or len(w) < 2 or (node.op_type == "Gemm" and len(x) != 2):
            return None
        k_dim, n = w[-2] or 1, w[-1] or 1
        if node.op_type == "Gemm" and attr(node, "transB", 0):
            n, k_dim = k_dim, n
        constant = node.input[1] in index.initializers
        rows = _elements(x[:-1] if constant else x[:-2]) or 1  # activations x activations: per matrix
        batch = 1 if constant else _elements(w[:-2]) or 1
        macs = max(rows, 1) * k_dim * n * batch
        what = f"{node.op_type} {rows}x{k_dim} by {k_dim}x{n}" + (
            "" if constant else f" (x{batch}, two activations)"
        )
        return "MatMul", what, (rows * batch, math.sqrt(k_dim * n)), macs
    return None


def _problem(model: onnx.ModelProto, index: GraphIndex, plan: QuantPlan) -> _Problem:
    """The candidates (INT8 nodes the table can price) and their neighbourhoods, walked through
    the INT8 nodes whose precision follows their inputs' (elementwise, pooling, Relu, Reshape...)."""
    precision = {n.name: n.precision for n in plan.nodes}
    nodes: dict[str, _Node] = {}
    for node in model.graph.node:
        if precision.get(node.name) != INT8:
            continue
        described = _describe(node, index)
        if described is not None:
            nodes[node.name] = _Node(node.name, *described)
    problem = _Problem(nodes, {}, {})
    by_name = {n.name: n for n in model.graph.node}

    def role(node: onnx.NodeProto) -> str:
        if node.name in nodes:
            return "candidate"
        if precision.get(node.name) != INT8:
            return "float"
        rule = rule_for(node)
        return "fixed" if rule is not None and rule.kind is Kind.COMPUTE else "follower"

    def share(tensor: str, name: str) -> None:
        size, names = problem.shared.get(tensor, (_elements(index.dims(tensor)) or 1, set()))
        problem.shared[tensor] = (size, names | {name})

    for name, cand in nodes.items():
        node = by_name[name]
        seen: set[str] = set()
        todo = deque(node.output[:1])
        while todo:  # forward: who reads its output
            tensor = todo.popleft()
            if tensor in seen:
                continue
            seen.add(tensor)
            size = _elements(index.dims(tensor)) or 1
            if tensor in index.graph_outputs:
                share(tensor, name)
            for reader in index.consumers.get(tensor, []):
                kind = role(reader)
                if reader.op_type in LAYOUT_OPS and node.op_type == "Conv" and kind == "follower":
                    cand.layout_elements += size
                if kind == "candidate":
                    key = (name, reader.name)
                    problem.pairs[key] = max(problem.pairs.get(key, 0), size)
                elif kind == "follower":
                    todo.extend(o for o in reader.output if o)
                elif kind == "fixed":
                    cand.float_crossings.append(size)
                elif not (tensor == node.output[0] and node.op_type in FLOAT_OUTPUT_OPS):
                    share(tensor, name)
        seen = set()
        todo = deque(t for t in node.input[:1] if t)
        while todo:  # backward: what its activation input comes from
            tensor = todo.popleft()
            if tensor in seen or tensor in index.initializers:
                continue
            seen.add(tensor)
            producer = index.producer.get(tensor)
            kind = "float" if producer is None else role(producer)
            if kind == "follower":
                todo.extend(i for i in producer.input if i)
            elif kind == "fixed":
                cand.float_crossings.append(_elements(index.dims(tensor)) or 1)
            elif kind == "float":
                share(tensor, name)
            # a candidate producer: the pair, counted from its side
    return problem


INFINITE = 1e18


def _min_cut(
    names: list[str],
    unary: dict[str, tuple[float, float]],
    pairs: dict[tuple[str, str], float],
    implies: list[tuple[str, str]],
) -> set[str]:
    """The names labelled float by the minimum s-t cut of: cost_int if a name is integer, cost_float
    if float, the pair's weight for each pair labelled differently; (x, z) in `implies`: x integer
    forces z integer. Ties go to integer."""
    s, t = "\0s", "\0t"
    cap: dict[str, dict[str, float]] = {s: {}, t: {}}
    for n in names:
        cap.setdefault(n, {})

    def add(u: str, v: str, c: float) -> None:
        cap[u][v] = cap[u].get(v, 0.0) + c
        cap[v].setdefault(u, 0.0)

    for n in names:
        c_int, c_float = unary[n]
        if c_float > c_int:
            add(s, n, c_float - c_int)  # cut when n is float
        elif c_int > c_float:
            add(n, t, c_int - c_float)  # cut when n is integer
    for (u, v), w in pairs.items():
        add(u, v, w)
        add(v, u, w)
    for x, z in implies:
        add(x, z, INFINITE)  # cut (forbidden) when x is integer and z float
    while True:  # Edmonds-Karp: shortest augmenting paths
        parent: dict[str, str | None] = {s: None}
        todo = deque([s])
        while todo and t not in parent:
            u = todo.popleft()
            for v, c in cap[u].items():
                if c > 1e-9 and v not in parent:
                    parent[v] = u
                    todo.append(v)
        if t not in parent:
            break
        path, v = [], t
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        flow = min(cap[u][v] for u, v in path)
        for u, v in path:
            cap[u][v] -= flow
            cap[v][u] += flow
    # float: the names that still reach t in the residual graph (the smallest float side)
    into: dict[str, list[str]] = {}
    for u, out in cap.items():
        for v, c in out.items():
            if c > 1e-9:
                into.setdefault(v, []).append(u)
    reaches_t, todo = {t}, deque([t])
    while todo:
        for u in into.get(todo.popleft(), []):
            if u not in reaches_t:
                reaches_t.add(u)
                todo.append(u)
    return reaches_t & set(names)


def _total(
    floats: set[str],
    candidates: set[str],
    unary: dict[str, tuple[float, float]],
    pairs: dict[tuple[str, str], float],
    implies: list[tuple[str, str]],
) -> float:
    """The estimated microseconds of a labelling: each candidate in its precision, each shared
    conversion an integer candidate needs once, each differing pair's conversion."""
    paid = {z for x, z in implies if x not in floats}
    cost = sum(unary[n][1] if n in floats else unary[n][0] for n in candidates)
    cost += sum(unary[z][0] for z in paid)
    return cost + sum(w for (u, v), w in pairs.items() if (u in floats) != (v in floats))


@dataclass(frozen=True)
class SpeedPlan:
    """The nodes to keep in float (name -> reason), and what decided it."""

    keep_float: dict[str, str]
    tables: list[str]  # labels of the tables that decided
    unplanned: list[str]  # kinds of the target with no table
    candidates: int  # nodes priced
    skipped: str | None = None  # why no node was priced
    # table kind -> estimated microseconds of the priced nodes and conversions: all INT8, as planned
    estimate_us: dict[str, tuple[float, float]] = field(default_factory=dict)

    def without(self, names: Iterable[str]) -> SpeedPlan:
        """The same plan leaving `names` to other decisions (nodes the user named for FP16)."""
        names = set(names)
        return replace(self, keep_float={k: v for k, v in self.keep_float.items() if k not in names})


def plan_speed(model: onnx.ModelProto, plan: QuantPlan, given: CostTable | None = None) -> SpeedPlan:
    """Which INT8 Conv/MatMul/Gemm nodes of `plan` to keep in float for speed on its target
    (`given`: a table the user measured, in place of the shipped one of its kind)."""
    tables, missing = tables_for(plan.config.target_cpu, given)
    if plan.config.activation_type is not QType.UINT8:
        why = (
            f"the cost tables time UINT8 activations (onnxruntime's U8S8 kernels), not "
            f"--activation-type {plan.config.activation_type.value}"
        )
        return SpeedPlan({}, [t.label for t in tables], missing, 0, skipped=why)
    problem = _problem(model, GraphIndex(model.graph), plan)
    nodes = problem.nodes
    keep: dict[str, str] = {}
    estimate: dict[str, tuple[float, float]] = {}
    for table in tables:
        own = {
            name: table.times(n.op_class, n.features, n.macs)
            for name, n in nodes.items()
            if n.op_class in table.ops
        }

        def crossing(size: int, name: str, table: CostTable = table) -> float:
            return table.crossing_us(size, nodes[name].op_class)

        unary = {
            name: (
                i_us + table.layout_us(nodes[name].layout_elements),
                f_us + sum(crossing(e, name) for e in nodes[name].float_crossings),
            )
            for name, (f_us, i_us) in own.items()
        }
        pairs = {(u, v): crossing(e, u) for (u, v), e in problem.pairs.items() if u in own and v in own}
        implies = []
        for tensor, (size, names) in sorted(problem.shared.items()):
            names = sorted(n for n in names if n in own)
            if names:
                aux = f"\0{tensor}"
                unary[aux] = (crossing(size, names[0]), 0.0)
                implies += [(n, aux) for n in names]
        floats = _min_cut(sorted(unary), unary, pairs, implies) & set(own)

        estimate[table.kind] = tuple(
            round(_total(chosen, set(own), unary, pairs, implies), 1) for chosen in (set(), floats)
        )
        for name in sorted(floats):
            if name in keep:
                continue
            f_us, i_us = own[name]
            n = nodes[name]
            kernel = "QLinearConv" if n.op_class in CONV_CLASSES else "the integer kernel"
            if i_us > f_us:
                why = f"{kernel} {i_us / f_us:.1f}x slower than float on {table.kind} for a {n.what}"
            else:
                why = (
                    f"{kernel} {i_us:.1f} us vs float {f_us:.1f} us on {table.kind} for a {n.what}, "
                    "less than the Q/DQ and layout conversions it needs in integer"
                )
            keep[name] = f"float for speed: {why} (cost table {table.label})"
    return SpeedPlan(keep, [t.label for t in tables], missing, len(nodes), estimate_us=estimate)
