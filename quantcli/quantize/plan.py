"""The QuantPlan: every quantization decision, per node and per tensor, in one serialisable object.

`plan_static()` makes it from a preprocessed model and calibrated ranges; `QuantPlan.save/load`
write and read it as JSON, so a plan can be replayed or hand-edited (a node set to "float" runs
in float). The rewriter reads only the plan: it makes no decisions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from quantcli.calibration.collect import Ranges
from quantcli.errors import BadPlanError
from quantcli.graph import GraphIndex
from quantcli.quantize.params import QType, calculate_qparams, weight_qparams
from quantcli.quantize.rules import Kind, OpRule, activation_input_indices, rule_for

PLAN_SCHEMA_VERSION = 1
INT8 = "int8"
FLOAT = "float"


@dataclass(frozen=True)
class StaticConfig:
    """Options of static INT8 quantization."""

    per_channel: bool = True
    activation_type: QType = QType.UINT8
    calib_method: str = "minmax"

    def __post_init__(self) -> None:
        if self.activation_type not in (QType.UINT8, QType.INT8):
            raise ValueError(f"activation type must be uint8 or int8, not {self.activation_type}")

    @property
    def symmetric_activations(self) -> bool:
        """UINT8 activations are asymmetric; INT8 activations are symmetric (zero point 0)."""
        return self.activation_type is QType.INT8


@dataclass
class TensorParams:
    """How one tensor is quantized. `role`: activation, weight, bias or constant."""

    role: str
    dtype: QType
    scale: list[float]
    zero_point: list[int]
    axis: int | None = None
    range: list[float] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point, dtype=np.int64).astype(self.dtype.numpy)
        if self.axis is None:
            return scale.reshape(()), zp.reshape(())
        return scale, zp


@dataclass
class NodePlan:
    """The precision of one node, why, and which of its tensors are quantized."""

    name: str
    op_type: str
    precision: str
    reason: str
    quantized_inputs: list[str] = field(default_factory=list)
    quantized_outputs: list[str] = field(default_factory=list)


@dataclass
class QuantPlan:
    mode: str
    config: StaticConfig
    nodes: list[NodePlan]
    tensors: dict[str, TensorParams]
    calibration_samples: int = 0

    def node(self, name: str) -> NodePlan | None:
        return next((n for n in self.nodes if n.name == name), None)

    def to_dict(self) -> dict:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "mode": self.mode,
            "config": {
                "per_channel": self.config.per_channel,
                "activation_type": self.config.activation_type.value,
                "calib_method": self.config.calib_method,
            },
            "calibration_samples": self.calibration_samples,
            "nodes": [asdict(n) for n in self.nodes],
            "tensors": {k: {**asdict(v), "dtype": v.dtype.value} for k, v in sorted(self.tensors.items())},
        }

    def save(self, path: Path) -> None:
        from quantcli.model_io import write_bytes_atomic

        text = json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"
        write_bytes_atomic(Path(path), text.encode())

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> QuantPlan:
        try:
            if data.get("schema_version") != PLAN_SCHEMA_VERSION:
                raise BadPlanError(
                    f"{source}: plan schema_version {data.get('schema_version')!r} is not "
                    f"{PLAN_SCHEMA_VERSION}"
                )
            cfg = data["config"]
            config = StaticConfig(
                per_channel=bool(cfg["per_channel"]),
                activation_type=QType(cfg["activation_type"]),
                calib_method=str(cfg["calib_method"]),
            )
            nodes = [NodePlan(**n) for n in data["nodes"]]
            for n in nodes:
                if n.precision not in (INT8, FLOAT):
                    raise BadPlanError(
                        f"{source}: node {n.name}: precision must be 'int8' or 'float', not {n.precision!r}"
                    )
            tensors = {
                k: TensorParams(**{**v, "dtype": QType(v["dtype"])}) for k, v in data["tensors"].items()
            }
            return cls(data["mode"], config, nodes, tensors, int(data.get("calibration_samples", 0)))
        except BadPlanError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadPlanError(f"{source}: not a valid quantcli plan ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def load(cls, path: Path) -> QuantPlan:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise BadPlanError(f"{p}: no such plan file") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadPlanError(f"{p}: cannot read plan: {exc}") from exc
        if not isinstance(data, dict):
            raise BadPlanError(f"{p}: not a valid quantcli plan (expected a JSON object)")
        return cls.from_dict(data, str(p))


def _absorbable(
    node: onnx.NodeProto,
    producer: onnx.NodeProto | None,
    index: GraphIndex,
    precision: dict[str, str],
    config: StaticConfig,
) -> str | None:
    """Why a Relu/Clip cannot vanish into its producer's output QuantizeLinear, or None."""
    if config.symmetric_activations:
        return "symmetric INT8 activations cannot absorb it (zero point is not the type minimum)"
    if producer is None or precision.get(producer.name) != INT8:
        return "its input is not produced by an INT8 node"
    prule = rule_for(producer)
    if prule is None or prule.kind not in (Kind.COMPUTE, Kind.ELEMENTWISE):
        return f"{producer.op_type} output cannot absorb it"
    src = node.input[0]
    if len(index.consumers[src]) != 1 or src in index.graph_outputs:
        return "its input has other consumers"
    return None


def plan_static(model: onnx.ModelProto, ranges: Ranges, config: StaticConfig) -> QuantPlan:
    """Decide each node's precision and each quantized tensor's parameters."""
    index = GraphIndex(model.graph)
    precision: dict[str, str] = {}
    reasons: dict[str, str] = {}
    produced_int8: set[str] = set()

    for node in model.graph.node:
        rule = rule_for(node)
        decision, reason = _decide(node, rule, index, ranges, precision, produced_int8, config)
        precision[node.name] = decision
        reasons[node.name] = reason
        if decision == INT8:
            produced_int8.update(o for o in node.output if o)

    nodes: list[NodePlan] = []
    tensors: dict[str, TensorParams] = {}
    for node in model.graph.node:
        rule = rule_for(node)
        plan = NodePlan(node.name, node.op_type, precision[node.name], reasons[node.name])
        nodes.append(plan)
        if plan.precision != INT8 or rule is None:
            continue
        _plan_tensors(node, rule, plan, index, ranges, precision, tensors, config)
    return QuantPlan("static", config, nodes, tensors, ranges.samples)


def _decide(
    node,
    rule: OpRule | None,
    index: GraphIndex,
    ranges: Ranges,
    precision,
    produced_int8,
    config: StaticConfig,
) -> tuple[str, str]:  # noqa: ANN001
    if rule is None:
        where = (
            f"domain {node.domain}" if node.domain not in ("", "ai.onnx") else "onnxruntime's CPU provider"
        )
        return FLOAT, f"no INT8 kernel for {node.op_type} in {where}"
    why_not = rule.check(node, index)
    if why_not:
        return FLOAT, why_not
    if rule.kind is Kind.ABSORBED:
        producer = index.producer.get(node.input[0])
        why_not = _absorbable(node, producer, index, precision, config)
        if why_not:
            return FLOAT, f"{node.op_type} kept in float: {why_not}"
        if node.output[0] not in ranges.ranges:
            return FLOAT, f"no calibrated range for {node.output[0]}"
        return INT8, f"absorbed into {producer.name}'s output range"
    act_inputs = [
        node.input[i] for i in activation_input_indices(rule, node) if node.input[i] not in index.initializers
    ]
    if rule.op_type == "MatMul" and node.input[1] in index.initializers:
        act_inputs = [node.input[0]]
    if rule.op_type == "Add":
        producer = _float_output_producer(node, index, precision)
        if producer is not None:
            return FLOAT, (
                f"bias of an INT8 {producer.op_type}: added in float to the integer kernel's "
                "float output (more accurate than requantizing for QLinearAdd)"
            )
    if rule.kind in (Kind.ELEMENTWISE, Kind.FIXED, Kind.SHARED):
        fed = [t for t in act_inputs if t in produced_int8]
        if rule.kind is Kind.SHARED:
            fed = fed[:1] if act_inputs and act_inputs[0] in produced_int8 else []
        if not fed:
            return FLOAT, "its inputs are float; Q/DQ around it alone would only add cost"
    if rule.kind is not Kind.SHARED:
        needed = list(act_inputs)
        if rule.kind not in (Kind.FIXED,):
            needed += [o for o in node.output[:1] if not _float_output(rule, node, index)]
        missing = [t for t in needed if t not in ranges.ranges and t not in produced_int8]
        missing = [t for t in missing if t not in ranges.ranges]
        if missing:
            return FLOAT, f"no calibrated range for {missing[0]}"
    return INT8, f"{rule.kernel}"


def _float_output_producer(
    node: onnx.NodeProto, index: GraphIndex, precision: dict[str, str]
) -> onnx.NodeProto | None:
    """The INT8 MatMul/Gemm whose bias this Add adds, when that kernel can return float.

    MatMul + Add(bias) is how exporters write a Linear on 3-D input. Returning float from the
    MatMul (MatMulIntegerToFloat) and adding the bias in float is more accurate than
    requantizing the MatMul output for a QLinearAdd, and saves a Q/DQ pair and a kernel.
    """
    consts = [i for i in node.input if i in index.initializers]
    acts = [i for i in node.input if i and i not in index.initializers]
    if len(consts) != 1 or len(acts) != 1:
        return None
    producer = index.producer.get(acts[0])
    prule = rule_for(producer) if producer is not None else None
    if prule is None or not prule.float_output_ok or precision.get(producer.name) != INT8:
        return None
    if len(index.consumers[acts[0]]) != 1 or acts[0] in index.graph_outputs:
        return None
    return producer


def _float_output(rule: OpRule, node: onnx.NodeProto, index: GraphIndex) -> bool:
    """True when the node's output stays float (integer kernel with float output)."""
    return rule.float_output_ok and node.output[0] in index.graph_outputs


def _plan_tensors(
    node,
    rule: OpRule,
    plan: NodePlan,
    index: GraphIndex,
    ranges: Ranges,
    precision: dict[str, str],
    tensors: dict[str, TensorParams],
    config: StaticConfig,
) -> None:  # noqa: ANN001
    act = config.activation_type
    sym = config.symmetric_activations

    def activation(name: str) -> TensorParams:
        if name in tensors:
            return tensors[name]
        producer = index.producer.get(name)
        prule = rule_for(producer) if producer is not None else None
        if prule is not None and precision.get(producer.name) == INT8:
            if prule.kind is Kind.SHARED:
                src = activation(producer.input[0])
                params = TensorParams(
                    "activation", src.dtype, list(src.scale), list(src.zero_point), None, src.range
                )
                tensors[name] = params
                return params
            if prule.kind is Kind.FIXED and prule.fixed_range is not None:
                lo, hi = prule.fixed_range
                scale, zp = calculate_qparams(lo, hi, act, sym)
                tensors[name] = TensorParams("activation", act, [float(scale)], [int(zp)], None, [lo, hi])
                return tensors[name]
        lo, hi = ranges.ranges[name]
        scale, zp = calculate_qparams(lo, hi, act, sym)
        tensors[name] = TensorParams("activation", act, [float(scale)], [int(zp)], None, [lo, hi])
        return tensors[name]

    def constant(name: str) -> None:
        if name in tensors:
            return
        values = index.array(name)
        lo, hi = float(np.min(values, initial=0.0)), float(np.max(values, initial=0.0))
        scale, zp = calculate_qparams(lo, hi, act, sym)
        tensors[name] = TensorParams("constant", act, [float(scale)], [int(zp)], None, [lo, hi])

    if rule.kind is Kind.ABSORBED:
        activation(node.output[0])
        plan.quantized_outputs.append(node.output[0])
        return

    weight_name = None
    if rule.weight_input is not None and rule.weight_input < len(node.input):
        candidate = node.input[rule.weight_input]
        if candidate in index.initializers:
            weight_name = candidate

    for i in activation_input_indices(rule, node):
        name = node.input[i]
        if name == weight_name:
            continue
        if name in index.initializers:
            constant(name)
        else:
            activation(name)
        plan.quantized_inputs.append(name)

    if weight_name is not None:
        if weight_name not in tensors:
            w = index.array(weight_name)
            axis = rule.weight_axis(node, index) if config.per_channel else None
            scale, zp = weight_qparams(w, axis)
            tensors[weight_name] = TensorParams(
                "weight",
                QType.INT8,
                np.atleast_1d(scale).tolist(),
                np.atleast_1d(zp).astype(int).tolist(),
                axis,
            )
        plan.quantized_inputs.append(weight_name)
        bias_i = rule.bias_input
        if bias_i is not None and bias_i < len(node.input) and node.input[bias_i] in index.initializers:
            bias = node.input[bias_i]
            in_scale = np.float32(tensors[node.input[0]].scale[0])
            w_scale = np.asarray(tensors[weight_name].scale, dtype=np.float32)
            b_scale = (in_scale * w_scale).astype(np.float32)
            if bias not in tensors:
                tensors[bias] = TensorParams(
                    "bias",
                    QType.INT32,
                    b_scale.tolist(),
                    [0] * b_scale.size,
                    0 if b_scale.size > 1 else None,
                )
            plan.quantized_inputs.append(bias)

    # Outputs: quantized unless a consumer absorbs them or the kernel may return float.
    out = node.output[0]
    consumers = index.consumers[out]
    absorbed = (
        len(consumers) == 1
        and precision.get(consumers[0].name) == INT8
        and (rule_for(consumers[0]) is not None and rule_for(consumers[0]).kind is Kind.ABSORBED)
    )
    if absorbed:
        return
    if rule.float_output_ok:
        if out in index.graph_outputs:
            return
        feeds_int8 = any(
            precision.get(c.name) == INT8
            and out in [c.input[i] for i in activation_input_indices(rule_for(c), c)]
            for c in consumers
            if rule_for(c) is not None
        )
        if not feeds_int8:
            return
    activation(out)
    plan.quantized_outputs.append(out)
