"""The QuantPlan: every quantization decision, per node and per tensor, in one serialisable object.

Each mode's planner makes one (`static.plan_static`, `dynamic.plan_dynamic`,
`weights.plan_weights_int8`, `int4.plan_weights_int4`, `fp16.plan_fp16`); `QuantPlan.save/load` write and read it as JSON, so
a plan can be replayed or hand-edited (a node set to "float" runs in float32). The rewriters read
only the plan: they make no decisions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from quantcli.cpu import DEFAULT_TARGET, TARGETS, target_saturates
from quantcli.errors import BadPlanError
from quantcli.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
from quantcli.quantize.params import QType, weight_qparams, weight_qparams_mse

# 2: nodes state their form ("form": rows, nhwc); plans of version 1 load with the forms their
# rewriter used to infer (QuantPlan.from_dict)
PLAN_SCHEMA_VERSION = 2
INT8 = "int8"
INT4 = "int4"
FP16 = "fp16"
FLOAT = "float"
PRECISIONS = (INT8, INT4, FP16, FLOAT)
# How a node is written, where its precision alone does not say it ("" : the precision's QDQ form).
ROWS = "rows"  # an INT8 Gather on a constant table: the table stored INT8 per row, rows dequantized
NHWC = "nhwc"  # an INT8 Flatten before an INT8 Gemm: a Transpose to NHWC before it, the Gemm weight permuted
FORMS = {ROWS: ("Gather", (INT8,)), NHWC: ("Flatten", (INT8,))}  # form -> (op type, precisions)
ACTIVATION_TYPES = (QType.UINT8, QType.INT8, QType.INT16)


@dataclass(frozen=True)
class QuantConfig:
    """Options that shape a plan (activation options matter to static mode only)."""

    per_channel: bool = True
    activation_type: QType = QType.UINT8
    calib_method: str = "minmax"
    weight_calibration: str = "minmax"
    reduce_range: bool = False
    dynamic_op_types: tuple[str, ...] = ("MatMul", "Gemm")
    keep_io_types: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE  # weights-int4: values per block along K
    weight_symmetric: bool = False  # weights-int4: no zero points (MatMulNBits' implicit 8)
    int4_compute: str = "float"  # weights-int4: "int8" sets MatMulNBits accuracy_level 4
    integer_io: bool = False  # static: quantized graph inputs/outputs (quantize/integer_io.py)
    bias_correction: bool = True  # static/mixed: INT32 biases cancel the INT8 weights' mean shift
    target_cpu: str = DEFAULT_TARGET  # the CPU kind the model is for (cpu.TARGETS)

    def __post_init__(self) -> None:
        if self.target_cpu not in TARGETS:
            raise ValueError(f"target CPU must be one of {', '.join(TARGETS)}, not {self.target_cpu}")
        if self.int4_compute not in ("float", "int8"):
            raise ValueError(f"int4 compute must be float or int8, not {self.int4_compute}")
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(
                f"block size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {self.block_size}"
            )
        if self.weight_calibration not in ("minmax", "mse"):
            raise ValueError(f"weight calibration must be minmax or mse, not {self.weight_calibration}")
        if self.activation_type not in ACTIVATION_TYPES:
            names = ", ".join(t.value for t in ACTIVATION_TYPES)
            raise ValueError(f"activation type must be one of {names}, not {self.activation_type}")

    @property
    def symmetric_activations(self) -> bool:
        """UINT8 and INT16 activations are asymmetric; INT8 activations are symmetric (zero point 0).

        INT16 is asymmetric because nothing runs it in integer arithmetic (no kernel prefers a zero
        zero point) and a one-sided range (after ReLU/ReLU6) keeps its 16th bit: measured on
        EfficientNet-Lite0 against the INT8-weights-only model, 73 dB SQNR asymmetric vs 52 dB
        symmetric (README, "16-bit activations")."""
        return self.activation_type is QType.INT8

    @property
    def saturation_safe(self) -> bool:
        """INT8 weights of U8S8 integer kernels keep every pair within the int16 limit
        (quantize/saturation.py): the target includes x86 CPUs without VNNI."""
        return target_saturates(self.target_cpu)


@dataclass
class TensorParams:
    """How one tensor is quantized. `role`: activation, weight, bias or constant."""

    role: str
    dtype: QType
    scale: list[float]
    zero_point: list[int]
    axis: int | None = None
    range: list[float] | None = None
    # bias: subtracted from the float values before quantizing (quantize/bias_correction.py)
    correction: list[float] | None = None
    # weight: no pair of codes the x86 U8S8 kernels add in int16 exceeds this same-sign sum, pairs
    # taken along K in `pair_layout` order (quantize/saturation.py); None: full range
    pair_limit: int | None = None
    pair_layout: str | None = None
    pair_weights: list[float] | None = None  # each input channel's relative E[x^2] (None: equal)

    @classmethod
    def for_weight(cls, w: np.ndarray, axis: int | None, config: QuantConfig | None = None) -> TensorParams:
        """INT8 symmetric parameters of a weight, per channel along `axis` (None: per tensor);
        `config.weight_calibration` "mse" clips each channel where the quantization error is
        smallest, `config.reduce_range` uses 7-bit weights."""
        config = config or QuantConfig()
        if config.weight_calibration == "mse":
            scale, zp = weight_qparams_mse(w, axis, reduce_range=config.reduce_range)
        else:
            scale, zp = weight_qparams(w, axis, reduce_range=config.reduce_range)
        return cls(
            "weight", QType.INT8, np.atleast_1d(scale).tolist(), np.atleast_1d(zp).astype(int).tolist(), axis
        )

    def to_uint8(self) -> None:
        """The same symmetric INT8 weight stored UINT8 (value + 128, zero point 128): onnxruntime
        multiplies it on its exact U8U8 kernel instead of U8S8 (quantize/exact_layers.py)."""
        self.dtype = QType.UINT8
        self.zero_point = [128] * len(self.zero_point)

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
    form: str = ""  # how the rewriter writes it, beyond its precision (FORMS); "" for the plain form


def _node_dict(node: NodePlan) -> dict:
    """A node as JSON; its form only where it has one."""
    d = asdict(node)
    if not node.form:
        del d["form"]
    return d


def _tensor_dict(params: TensorParams) -> dict:
    """A tensor's parameters as JSON; the pair limit only where it is set (full-range weights and
    activations keep the keys they had before it existed)."""
    d = {**asdict(params), "dtype": params.dtype.value}
    if params.pair_limit is None:
        del d["pair_limit"], d["pair_layout"], d["pair_weights"]
    return d


@dataclass
class QuantPlan:
    mode: str
    config: QuantConfig
    nodes: list[NodePlan]
    tensors: dict[str, TensorParams]
    calibration_samples: int = 0
    # False for a version-1 plan: it does not say which Flatten nodes are written in NHWC order, and
    # the rewriter applies the rule where it holds, as it did then (quantize/layout.py)
    forms_stated: bool = True

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
                "weight_calibration": self.config.weight_calibration,
                "reduce_range": self.config.reduce_range,
                "dynamic_op_types": list(self.config.dynamic_op_types),
                "keep_io_types": self.config.keep_io_types,
                "block_size": self.config.block_size,
                "weight_symmetric": self.config.weight_symmetric,
                "int4_compute": self.config.int4_compute,
                "integer_io": self.config.integer_io,
                "bias_correction": self.config.bias_correction,
                "target_cpu": self.config.target_cpu,
            },
            "calibration_samples": self.calibration_samples,
            "nodes": [_node_dict(n) for n in self.nodes],
            "tensors": {k: _tensor_dict(v) for k, v in sorted(self.tensors.items())},
        }

    def to_json(self) -> str:
        """The plan file's text (what `save` writes)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    def save(self, path: Path) -> None:
        from quantcli.model_io import write_bytes_atomic

        write_bytes_atomic(Path(path), self.to_json().encode())

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> QuantPlan:
        """The plan of a JSON object, every field validated first (quantize/plan_check.py): a
        problem is a BadPlanError naming `source`, the node or tensor and the field."""
        from quantcli.quantize.plan_check import check_plan_dict

        check_plan_dict(data, source)
        cfg = data["config"]
        config = QuantConfig(
            per_channel=cfg["per_channel"],
            activation_type=QType(cfg["activation_type"]),
            calib_method=cfg["calib_method"],
            weight_calibration=cfg.get("weight_calibration", "minmax"),
            reduce_range=cfg.get("reduce_range", False),
            dynamic_op_types=tuple(cfg.get("dynamic_op_types", ("MatMul", "Gemm"))),
            keep_io_types=cfg.get("keep_io_types", True),
            block_size=cfg.get("block_size", DEFAULT_BLOCK_SIZE),
            weight_symmetric=cfg.get("weight_symmetric", False),
            int4_compute=cfg.get("int4_compute", "float"),
            integer_io=cfg.get("integer_io", False),
            bias_correction=cfg.get("bias_correction", False),
            # plans written before --target-cpu existed hold full-range weights
            target_cpu=cfg.get("target_cpu", "vnni"),
        )
        nodes = [
            NodePlan(
                n["name"],
                n["op_type"],
                n["precision"],
                n.get("reason", ""),
                list(n.get("quantized_inputs", [])),
                list(n.get("quantized_outputs", [])),
                n.get("form", ""),
            )
            for n in data["nodes"]
        ]
        forms_stated = data["schema_version"] >= 2
        if not forms_stated:  # version 1: what its rewriter inferred from op types and precisions
            for n in nodes:
                if n.op_type == "Gather" and n.precision == INT8:
                    n.form = ROWS
        tensors = {k: TensorParams(**{**v, "dtype": QType(v["dtype"])}) for k, v in data["tensors"].items()}
        return cls(data["mode"], config, nodes, tensors, data.get("calibration_samples", 0), forms_stated)

    @classmethod
    def load(cls, path: Path) -> QuantPlan:
        from quantcli.outputs import input_kind

        p = Path(path)
        kind = input_kind(p)
        if kind is not None:  # reading it could block (a FIFO) or never end (/dev/zero)
            raise BadPlanError(f"{p}: is {kind}, not a regular file; plans are read only from regular files")
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise BadPlanError(f"{p}: no such plan file") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadPlanError(f"{p}: cannot read plan: {exc}") from exc
        if not isinstance(data, dict):
            raise BadPlanError(f"{p}: not a valid quantcli plan (expected a JSON object)")
        return cls.from_dict(data, str(p))
