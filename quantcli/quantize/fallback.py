"""Accuracy to a budget: the fewest nodes moved out of INT8 that make the thresholds pass.

`convert --min-top1-agreement 0.98 --fallback float` (any accuracy threshold; FLOAT or FP16)
quantizes everything the static plan allows, measures it on the evaluation samples, and while a
bound is missed moves the most sensitive remaining nodes to the fallback precision, stopping at
the first plan that meets every bound. `mixed` is the same mechanism with a node count instead of
a bound (quantize/mixed.py).

Sensitivity (rank): a cheap pass ranks every candidate (an INT8 node with arithmetic of its own) by
the SQNR its own layer loses in INT8 (per_layer.py, on the calibration samples). The per-layer
loss favours first layers and errors do not add up along a network, so the worst of them are then
each tried alone in the fallback precision, and ranked by how much the model's outputs gain; the
rest follow in per-layer order. Every run is the real, fused model on the target's kernels
(`target_session`: exact integer kernels where the target's CPUs accumulate in int32).

Search (search): the thresholds are checked on the evaluation samples (never calibration ones) for
the first k nodes of the ranking, k = 0, 1, 2, 4, ... until a plan meets them, then bisected between
the last k that missed and the first that met: about 2 log2(n) evaluations for n candidates. If the
plan with every candidate (or `--max-fallback` of them) moved still misses, the search says so
with the best figures it measured; the caller exits 3.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import islice

import numpy as np
import onnx

from quantcli.calibration.collect import Ranges
from quantcli.errors import UsageError
from quantcli.graph import GraphIndex, copy_model
from quantcli.quantize.plan import FLOAT, FP16, INT8, QuantConfig, QuantPlan
from quantcli.quantize.rules import Kind, rule_for
from quantcli.text import count as count_of
from quantcli.text import exclude_flag
from quantcli.thresholds import Check, Thresholds, evaluate
from quantcli.verify import Agreement, feeds_key

PRECISIONS = (FLOAT, FP16)  # --fallback choices
SENSITIVITY_SAMPLES = 32  # calibration samples each sensitivity run uses
TRIED_ALONE = 24  # candidates (worst per-layer loss first) measured alone in the fallback precision
# Samples of the per-layer pass that only chooses which candidates to try alone: every tensor
# exposed makes it the costly run (all-MiniLM-L6-v2: 90 of a 162 s search with 32 samples).
PER_LAYER_SAMPLES = 8

SampleSource = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class Candidate:
    """A node the search may move out of INT8, with what was measured of it."""

    name: str
    op_type: str
    loss_db: float  # SQNR its own layer loses in INT8 (0 when no layer of it was compared)
    gain_db: float | None = None  # outputs' SQNR gained with it alone in the fallback (None: not tried)


@dataclass
class Step:
    """One plan the search measured on the evaluation samples: the first `moved` candidates in fallback."""

    moved: int
    met: bool
    checks: list[Check]
    worst_sqnr_db: float


@dataclass
class SearchResult:
    """What the search did, for the report and --json."""

    precision: str
    goal: list[str]  # the bounds, as flags
    candidates: list[Candidate]  # ranked, most sensitive first
    steps: list[Step] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # the plan's fallback nodes, in ranking order
    met: bool = False
    limit: int = 0  # at most this many candidates may move (--max-fallback)
    seconds: float = 0.0

    @property
    def exclude_flag(self) -> str:
        """The --exclude-nodes flag that keeps the moved nodes in float without searching."""
        return exclude_flag(self.moved) if self.moved else ""

    def best(self) -> Step | None:
        """The measured plan that met the bounds with the fewest nodes moved, else the most accurate."""
        met = [s for s in self.steps if s.met]
        if met:
            return min(met, key=lambda s: s.moved)
        return max(self.steps, key=lambda s: (s.worst_sqnr_db, -s.moved), default=None)


def accuracy_bounds(thresholds: Thresholds) -> Thresholds:
    """The bounds a fallback can move: accuracy, not size or latency (those stay a gate)."""
    return replace(thresholds, max_size_ratio=None, max_latency_ratio=None)


def goal_flags(thresholds: Thresholds) -> list[str]:
    """The accuracy bounds as the flags that set them: ['--min-top1-agreement 0.98']."""
    flags = []
    for limit, bounds in accuracy_bounds(thresholds).items():
        for output, bound in bounds.items():
            flags.append(f"--{limit.option} {output + '=' if output else ''}{bound:g}")
    return flags


def parse_limit(text: object, candidates: int) -> int:
    """--max-fallback: a node count (`12`) or a share of the candidates (`10%`); None: no limit."""
    if text is None:
        return candidates
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            share = float(raw[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return min(candidates, int(share / 100 * candidates))
        value = int(raw)
        if value < 0:
            raise ValueError
        return min(candidates, value)
    except ValueError:
        raise UsageError(
            f"--max-fallback {raw}: expected a node count (12) or a share of the candidates (10%)"
        ) from None


def check_limit(text: object) -> None:
    """Fail early (before any work) on a --max-fallback that cannot be parsed."""
    parse_limit(text, 0)


def match_nodes(
    model: onnx.ModelProto, patterns: tuple[str, ...], flag: str, *, labels: bool = False
) -> dict[str, str]:
    """Node name -> the first of the shell-style `patterns` it matches, in graph order; with `labels`
    a node also matches by the `OpType(first output)` label reports give unnamed nodes. A pattern
    that matches nothing is a UsageError naming `flag` (a typo should not silently change nothing)."""
    names = {
        n.name: (n.name, f"{n.op_type}({n.output[0] if n.output else ''})") if labels else (n.name,)
        for n in model.graph.node
    }
    unmatched = [
        p for p in patterns if not any(fnmatch.fnmatchcase(x, p) for xs in names.values() for x in xs)
    ]
    if unmatched:
        raise UsageError(f"{flag} {','.join(unmatched)}: matches no node of the model")
    matched = {}
    for name, xs in names.items():
        pattern = next((p for p in patterns if any(fnmatch.fnmatchcase(x, p) for x in xs)), None)
        if pattern is not None:
            matched[name] = pattern
    return matched


def excluded_nodes(
    model: onnx.ModelProto, patterns: tuple[str, ...], op_types: tuple[str, ...]
) -> dict[str, str]:
    """Node name -> reason for the nodes `--exclude-nodes` (shell patterns on node names, or on the
    `OpType(first output)` label reports give unnamed nodes) and `--exclude-op-types` name; a
    pattern or op type matching no node is a UsageError (a typo should not silently change nothing)."""
    nodes = list(model.graph.node)
    matched = match_nodes(model, patterns, "--exclude-nodes", labels=True)
    present = {n.op_type for n in nodes}
    missing = [t for t in op_types if t not in present]
    if missing:
        raise UsageError(
            f"--exclude-op-types {','.join(missing)}: the model has no such node "
            f"(its op types: {', '.join(sorted(present))})"
        )
    reasons: dict[str, str] = {}
    for node in nodes:
        if node.name in matched:
            reasons[node.name] = f"float: excluded by --exclude-nodes {matched[node.name]}"
        elif node.op_type in op_types:
            reasons[node.name] = f"float: excluded by --exclude-op-types {node.op_type}"
    return reasons


def candidates_of(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """INT8 nodes with arithmetic of their own (not ops that only move or clip quantized data), in
    graph order: what a fallback can move."""
    precision = {n.name: n.precision for n in plan.nodes}
    names = []
    for node in model.graph.node:
        if precision.get(node.name) != INT8:
            continue
        rule = rule_for(node)
        if rule is None or rule.kind not in (Kind.SHARED, Kind.ABSORBED):
            names.append(node.name)
    return names


def plan_with(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    *,
    float_nodes: dict[str, str],
    fp16_nodes: dict[str, str],
    memo: dict | None = None,
) -> QuantPlan:
    """The static plan with `float_nodes` in float32 and `fp16_nodes` in FP16 (name -> reason);
    a mixed plan when FP16 is asked for (quantize/mixed.py). `memo`: weight parameters kept
    between the plans of one search (static.plan_static)."""
    from quantcli.quantize.mixed import plan_mixed
    from quantcli.quantize.static import plan_static

    if fp16_nodes:
        return plan_mixed(
            model,
            ranges,
            config,
            named=[],
            sensitivity={},
            count=0,
            chosen=fp16_nodes,
            keep_float=float_nodes,
            memo=memo,
        )
    return plan_static(model, ranges, config, keep_float=float_nodes, memo=memo)


def rewrite(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A rewritten copy of `model` (the search keeps the float model for the next plan)."""
    from quantcli.quantize.mixed import rewrite_mixed
    from quantcli.quantize.qdq import rewrite_qdq

    if plan.mode == "mixed":
        return rewrite_mixed(copy_model(model), plan)
    return rewrite_qdq(model, plan)


def on_target(model: onnx.ModelProto, config: QuantConfig) -> onnx.ModelProto:
    """The model as this CPU must run it to compute what the target's CPUs compute: as it is, unless
    its full-range weights (a target without x86 CPUs lacking VNNI) meet a host whose U8S8 kernels
    saturate; then with those weights stored UINT8, on exact kernels (verify.exact_kernel_model)."""
    from quantcli.cpu import host_features
    from quantcli.verify import exact_kernel_model

    if not config.saturation_safe and host_features().u8s8_saturates is not False:
        return exact_kernel_model(model) or model
    return model


def target_session(model: onnx.ModelProto, config: QuantConfig, *, lean: bool = True):  # noqa: ANN201
    """A session computing what the target's CPUs compute (on_target)."""
    from quantcli.runtime import make_session

    return make_session(on_target(model, config), lean=lean)


def output_sqnr(reference, candidate, samples: SampleSource) -> float:  # noqa: ANN001 - sessions
    """The worst output's SQNR (dB) of the candidate session against the float one on the samples."""
    from quantcli.verify import compare_sessions

    agreement = compare_sessions(reference, candidate, samples())
    return min(o.sqnr_db for o in agreement.outputs)


class CachedOutputs:
    """A float session whose outputs are computed once per sample: a search compares many plans
    with it on the same samples. Up to CACHE_BYTES of outputs are kept; past that it runs again."""

    CACHE_BYTES = 256 << 20

    def __init__(self, session) -> None:  # noqa: ANN001 - onnxruntime.InferenceSession
        self.session = session
        self.cache: dict[tuple, list] = {}
        self.bytes = 0

    def __getattr__(self, name: str):  # noqa: ANN204 - get_inputs, get_outputs, get_modelmeta ...
        return getattr(self.session, name)

    def run(self, names, feeds, *args):  # noqa: ANN001, ANN002, ANN201 - InferenceSession.run
        key = (tuple(names), feeds_key(feeds))
        hit = self.cache.get(key)
        if hit is None:
            hit = self.session.run(names, feeds, *args)
            size = sum(getattr(v, "nbytes", 0) for v in hit)
            if self.bytes + size <= self.CACHE_BYTES:
                self.cache[key] = hit
                self.bytes += size
        return hit


def rank(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    samples: SampleSource,
    *,
    precision: str,
    keep_float: dict[str, str],
    tried: int,
    memory_budget_bytes: int,
    progress: Callable[[int, int], None] | None = None,
    memo: dict | None = None,
    per_layer_samples: int | None = None,
) -> list[Candidate]:
    """Every candidate of the static plan (with `keep_float` kept float), most sensitive first.

    The `tried` worst by per-layer loss are each measured alone in `precision`: those first, by the
    outputs' SQNR they gain; then the rest by per-layer loss. A node that cannot be FP16 is dropped
    (plan_mixed says why when named). `progress(done, total)` counts passes over the samples.
    """
    from quantcli.io_match import match_io
    from quantcli.per_layer import per_layer_errors
    from quantcli.runtime import make_session

    memo = {} if memo is None else memo
    base = plan_with(model, ranges, config, float_nodes=keep_float, fp16_nodes={}, memo=memo)
    measured = on_target(rewrite(model, base), config)  # per-layer figures on the target's kernels too
    reference = CachedOutputs(make_session(model, lean=True))
    candidate_session = make_session(measured, lean=True)
    io = match_io(reference, candidate_session, strict=False)
    if progress:
        progress(0, tried + 2)
    layer_samples = samples if per_layer_samples is None else lambda: islice(samples(), per_layer_samples)
    layers = per_layer_errors(model, measured, layer_samples, io, memory_budget_bytes=memory_budget_bytes)
    del measured
    index = GraphIndex(model.graph)
    names = candidates_of(model, base)
    precisions = {n.name: n.precision for n in base.nodes}
    loss: dict[str, float] = dict.fromkeys(names, 0.0)
    for layer in layers.layers:
        node = responsible(index, layer.tensor, precisions)
        if node in loss and layer.added_db > loss[node]:
            loss[node] = layer.added_db
    by_loss = sorted(names, key=lambda n: -loss[n])  # stable: graph order on ties
    chosen = [n for n in by_loss if loss[n] > 0][:tried]  # a node adding no error gains nothing
    total = len(chosen) + 2
    if progress:
        progress(1, total)
    baseline = output_sqnr(reference, candidate_session, samples)
    del candidate_session
    op_types = {n.name: n.op_type for n in model.graph.node}
    result: list[Candidate] = []
    for done, name in enumerate(chosen, start=2):
        if progress:
            progress(done, total)
        plan = (
            plan_with(
                model,
                ranges,
                config,
                float_nodes=keep_float,
                fp16_nodes={name: "FP16: tried alone"},
                memo=memo,
            )
            if precision == FP16
            else plan_with(
                model, ranges, config, float_nodes={**keep_float, name: "float"}, fp16_nodes={}, memo=memo
            )
        )
        if precision == FP16 and plan.node(name).precision != FP16:
            continue  # it cannot run in FP16 (an overflowing activation, an attribute)
        gain = output_sqnr(reference, target_session(rewrite(model, plan), config), samples) - baseline
        result.append(Candidate(name, op_types[name], loss[name], gain))
    if progress:
        progress(total, total)
    # The tried ones first, even those whose move alone lowers the outputs' SQNR: with others moved
    # they still help. Measured on EfficientNet-Lite0 (--min-top1-agreement 0.98): 39 of 60 moved;
    # with those after the untried ones, the goal needed all 60.
    result.sort(key=lambda c: -c.gain_db)
    return result + [Candidate(n, op_types[n], loss[n]) for n in by_loss if n not in set(chosen)]


def responsible(index: GraphIndex, tensor: str, precision: dict[str, str]) -> str | None:
    """The INT8 node whose arithmetic produced `tensor`: back through absorbed and shared ops."""
    node = index.producer.get(tensor)
    while node is not None and precision.get(node.name) == INT8:
        rule = rule_for(node)
        if rule is None or rule.kind not in (Kind.ABSORBED, Kind.SHARED):
            return node.name
        node = index.producer.get(node.input[0])
    return None


def reason(candidate: Candidate, precision: str, goal: list[str]) -> str:
    """Why the plan moved a node: the goal and what was measured of it."""
    head = f"{'FP16' if precision == FP16 else 'float'}: fallback to meet {', '.join(goal)}"
    if candidate.gain_db is None:
        return f"{head}: its INT8 form loses {candidate.loss_db:.1f} dB of SQNR in its own layer"
    return (
        f"{head}: alone in {'FP16' if precision == FP16 else 'float'} it raises the outputs' SQNR on the "
        f"calibration samples by {candidate.gain_db:.2f} dB (its INT8 form loses {candidate.loss_db:.1f} dB "
        "in its own layer)"
    )


def fallback_plan(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    search: SearchResult,
    moved: int,
    keep_float: dict[str, str],
    memo: dict | None = None,
) -> QuantPlan:
    """The static plan with the first `moved` ranked candidates in the fallback precision."""
    chosen = {c.name: reason(c, search.precision, search.goal) for c in search.candidates[:moved]}
    if search.precision == FP16:
        return plan_with(model, ranges, config, float_nodes=keep_float, fp16_nodes=chosen, memo=memo)
    return plan_with(model, ranges, config, float_nodes={**keep_float, **chosen}, fp16_nodes={}, memo=memo)


def search(
    model: onnx.ModelProto,
    ranges: Ranges,
    config: QuantConfig,
    *,
    precision: str,
    thresholds: Thresholds,
    measure: Callable[[QuantPlan], Agreement],
    rank_candidates: Callable[[], list[Candidate]],
    keep_float: dict[str, str],
    max_fallback: object,
    progress: Callable[[str, int, int], None] | None = None,
    memo: dict | None = None,
) -> tuple[QuantPlan, SearchResult]:
    """The plan with the fewest ranked candidates in `precision` that meets `thresholds` on
    `measure` (the evaluation samples), and what the search did; `result.met` is False when even
    the most it may move does not (the plan returned is then the most accurate one measured)."""
    t0 = time.perf_counter()
    bounds = accuracy_bounds(thresholds)
    result = SearchResult(precision, goal_flags(thresholds), [])
    plans: dict[int, QuantPlan] = {}

    def step(moved: int) -> bool:
        plan = fallback_plan(model, ranges, config, result, moved, keep_float, memo)
        if progress:
            progress(
                f"trying {count_of(moved, 'node')} in {precision}", len(result.steps), len(result.steps) + 1
            )
        agreement = measure(plan)
        checks = evaluate(bounds, agreement)
        met = all(c.passed for c in checks)
        result.steps.append(Step(moved, met, checks, min(o.sqnr_db for o in agreement.outputs)))
        plans[moved] = plan
        return met

    if step(0):  # nothing to move: no ranking needed
        result.met, result.seconds = True, time.perf_counter() - t0
        return plans[0], result
    result.candidates = rank_candidates()
    result.limit = parse_limit(max_fallback, len(result.candidates))
    lo, hi, k = 0, None, 1
    while k <= result.limit:  # doubling: 1, 2, 4, ... then the limit itself
        if step(k):
            hi = k
            break
        lo = k
        k = result.limit if k < result.limit <= 2 * k else 2 * k
    if hi is not None:
        while hi - lo > 1:  # bisect: lo misses, hi meets
            mid = (lo + hi) // 2
            if step(mid):
                hi = mid
            else:
                lo = mid
    best = result.best()
    result.met = best is not None and best.met
    chosen = best.moved if best is not None else 0
    result.moved = [c.name for c in result.candidates[:chosen]]
    result.seconds = time.perf_counter() - t0
    return plans[chosen], result
