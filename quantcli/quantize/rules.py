"""Per-op quantization rules: one registry entry per op type, read by the planner.

Each rule says which inputs are activations, which is a weight (and its per-channel axis), which
is a bias, how the output's parameters are found, and `check()` returns why a node cannot run in
INT8 (None when it can). The kinds follow onnxruntime's CPU QDQ fusions
(core/optimizer/qdq_transformer/selectors_actions): COMPUTE and ELEMENTWISE ops have QLinear*
kernels; SHARED ops run on quantized data when input and output share scale and zero point;
ABSORBED activations (Relu, Clip) vanish into the preceding op's output QuantizeLinear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import onnx
from onnx import TensorProto

from quantcli.graph import GraphIndex, attr


class Kind(str, Enum):
    COMPUTE = "compute"  # Conv, MatMul, Gemm: always worth INT8
    ELEMENTWISE = "elementwise"  # worth INT8 when an input is already quantized
    SHARED = "shared"  # output reuses the input's scale/zero point
    ABSORBED = "absorbed"  # Relu/Clip folded into the producer's output range
    FIXED = "fixed"  # output range known from the op (Softmax: [0, 1])


Check = Callable[[onnx.NodeProto, GraphIndex], "str | None"]
Axis = Callable[[onnx.NodeProto, GraphIndex], "int | None"]
PairLayout = Callable[[onnx.NodeProto, Sequence[int]], "str | None"]


def _no_check(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    return None


def _no_axis(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    return None


def _no_pairs(node: onnx.NodeProto, weight_dims: Sequence[int]) -> str | None:
    return None


@dataclass(frozen=True)
class OpRule:
    """How one op type is quantized; see the module docstring for the kinds."""

    op_type: str
    kind: Kind
    kernel: str  # what onnxruntime runs, for the report
    activation_inputs: tuple[int, ...] = (0,)
    weight_input: int | None = None
    bias_input: int | None = None
    float_output_ok: bool = False  # the integer kernel may return float (MatMulIntegerToFloat)
    fixed_range: tuple[float, float] | None = None
    check: Check = _no_check
    # The weight's output-channel axis for per-channel scales (None: per tensor).
    channel_axis: Axis = _no_axis
    # A 2-D weight's axis along K, the axis its products are summed over (None: not a 2-D weight).
    reduction_axis: Axis = _no_axis
    # How onnxruntime's x86 U8S8 kernel pairs the weight (of shape `weight_dims`) along K
    # (quantize/saturation.py), or None when its integer kernel cannot saturate (depthwise
    # QLinearConv) or it has none. The planner asks it of the float graph, inspect of the QDQ one.
    pairs: PairLayout = _no_pairs

    def weight_axis(self, node: onnx.NodeProto, index: GraphIndex) -> int | None:
        """Output-channel axis of the weight for per-channel scales, or None for per-tensor."""
        return self.channel_axis(node, index)

    def k_axis(self, node: onnx.NodeProto, index: GraphIndex) -> int | None:
        """The axis of a 2-D weight that runs along K (MatMul's [K, N]: 0; Gemm transB's [N, K]: 1)."""
        return self.reduction_axis(node, index)

    def pair_layout(self, node: onnx.NodeProto, weight_dims: Sequence[int]) -> str | None:
        return self.pairs(node, weight_dims)


def _gemm_axis(node: onnx.NodeProto, index: GraphIndex) -> int:
    return 0 if attr(node, "transB", 0) else 1


def _gemm_k_axis(node: onnx.NodeProto, index: GraphIndex) -> int:
    return 1 - _gemm_axis(node, index)


def _matmul_axis(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    return 1 if index.rank(node.input[1]) == 2 else None


def _matmul_k_axis(node: onnx.NodeProto, index: GraphIndex) -> int:
    return 0


def _conv_transpose_axis(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    return 1 if attr(node, "group", 1) == 1 else None


def _conv_pairs(node: onnx.NodeProto, weight_dims: Sequence[int]) -> str | None:
    dims = list(weight_dims)
    depthwise = len(dims) > 2 and dims[1] == 1 and dims[0] == attr(node, "group", 1)
    return None if depthwise else "conv"


def _gemm_pairs(node: onnx.NodeProto, weight_dims: Sequence[int]) -> str:
    return "nk" if attr(node, "transB", 0) else "kn"


def _matmul_pairs(node: onnx.NodeProto, weight_dims: Sequence[int]) -> str:
    return "kn"


def _float_input(node: onnx.NodeProto, index: GraphIndex, i: int) -> bool:
    t = index.elem_type(node.input[i]) if i < len(node.input) and node.input[i] else None
    return t in (None, TensorProto.FLOAT)


def _check_conv(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if node.input[1] not in index.initializers:
        return index.why_not_constant(node.input[1])
    if not _float_input(node, index, 0) or index.elem_type(node.input[1]) != TensorProto.FLOAT:
        return "not a float32 Conv"
    return None


def _check_gemm(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
        return "Gemm with alpha or beta != 1 has no fused integer kernel (QGemm needs beta = 1)"
    if attr(node, "transA", 0):
        return "Gemm with transA = 1 is not fused by onnxruntime"
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in index.initializers or index.rank(node.input[2]) != 1:
            return "bias is not a constant 1-D initializer (QGemm needs an INT32 bias)"
    if not (_float_input(node, index, 0) and _float_input(node, index, 1)):
        return "not a float32 Gemm"
    return None


def _check_matmul(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if not (_float_input(node, index, 0) and _float_input(node, index, 1)):
        return "not a float32 MatMul"
    if node.input[0] in index.initializers:
        return "constant left operand is not fused by onnxruntime"
    return None


def _check_float_inputs(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if not all(_float_input(node, index, i) for i in range(len(node.input)) if node.input[i]):
        return "input is not float32"
    return None


def _check_data_input(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """Shape ops: only the data input matters (the shape/axes inputs are int64)."""
    if not _float_input(node, index, 0):
        return "data input is not float32"
    return None


def _check_resize(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    # onnxruntime 1.32 drops the DequantizeLinear/QuantizeLinear around a nearest Resize (it runs
    # on the quantized data), but keeps them around a linear or cubic one, which then runs in float
    # between them: Q/DQ that only add cost (measured on a Conv -> Resize -> Conv graph).
    mode = attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "nearest":
        return (
            f"onnxruntime runs a {mode} Resize in float between Q/DQ (only a nearest one on quantized data)"
        )
    return _check_data_input(node, index)


def _check_maxpool(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if len(node.output) > 1 and node.output[1]:
        return "MaxPool with an Indices output has no quantized form"
    return _check_data_input(node, index)


def _check_clip(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    for i in (1, 2):
        if len(node.input) > i and node.input[i] and node.input[i] not in index.initializers:
            return "Clip bounds are not constants"
    return _check_float_inputs(node, index)


def _check_softmax(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    # onnxruntime 1.32's QLinearSoftmax (what DQ -> Softmax -> Q becomes) against float Softmax +
    # QuantizeLinear, one op, one thread, interleaved medians on this AVX512-VNNI EPYC: 6.6 vs 5.1 us
    # at [1, 4, 17, 17], 90 vs 32 us at [32, 4, 17, 17], 422 vs 61 us at [1, 12, 128, 128], 7.7 vs
    # 0.67 ms at [1, 12, 384, 384]. digits_vit static: 0.829 -> 0.793 of FP32 at batch 1.
    return (
        "onnxruntime's QLinearSoftmax is slower than float Softmax + QuantizeLinear "
        "(1.3x at 17 columns, 7x at 128, 11x at 384)"
    )


_RULES: dict[str, OpRule] = {}


def register(rule: OpRule) -> OpRule:
    _RULES[rule.op_type] = rule
    return rule


for _rule in (
    OpRule(
        "Conv",
        Kind.COMPUTE,
        "QLinearConv",
        weight_input=1,
        bias_input=2,
        check=_check_conv,
        channel_axis=lambda node, index: 0,
        pairs=_conv_pairs,
    ),
    OpRule(  # no pairs: onnxruntime's CPU provider runs it in float
        "ConvTranspose",
        Kind.COMPUTE,
        "QLinearConvTranspose",
        weight_input=1,
        bias_input=2,
        check=_check_conv,
        channel_axis=_conv_transpose_axis,
    ),
    OpRule(
        "Gemm",
        Kind.COMPUTE,
        "QGemm",
        weight_input=1,
        bias_input=2,
        float_output_ok=True,
        check=_check_gemm,
        channel_axis=_gemm_axis,
        reduction_axis=_gemm_k_axis,
        pairs=_gemm_pairs,
    ),
    OpRule(
        "MatMul",
        Kind.COMPUTE,
        "QLinearMatMul / MatMulIntegerToFloat",
        activation_inputs=(0, 1),
        weight_input=1,
        float_output_ok=True,
        check=_check_matmul,
        channel_axis=_matmul_axis,
        reduction_axis=_matmul_k_axis,
        pairs=_matmul_pairs,
    ),
    OpRule("Add", Kind.ELEMENTWISE, "QLinearAdd", (0, 1), check=_check_float_inputs),
    OpRule("Mul", Kind.ELEMENTWISE, "QLinearMul", (0, 1), check=_check_float_inputs),
    OpRule("Concat", Kind.ELEMENTWISE, "QLinearConcat", (), check=_check_float_inputs),
    OpRule("AveragePool", Kind.ELEMENTWISE, "QLinearAveragePool", check=_check_float_inputs),
    OpRule(
        "GlobalAveragePool",
        Kind.ELEMENTWISE,
        "QLinearGlobalAveragePool",
        check=_check_float_inputs,
    ),
    OpRule("Sigmoid", Kind.ELEMENTWISE, "QLinearSigmoid", check=_check_float_inputs),
    OpRule("LeakyRelu", Kind.ELEMENTWISE, "QLinearLeakyRelu", check=_check_float_inputs),
    OpRule("Softmax", Kind.FIXED, "QLinearSoftmax", fixed_range=(0.0, 1.0), check=_check_softmax),
    OpRule("MaxPool", Kind.SHARED, "MaxPool on UINT8", check=_check_maxpool),
    OpRule("Reshape", Kind.SHARED, "Reshape on quantized data", check=_check_data_input),
    OpRule("Transpose", Kind.SHARED, "Transpose on quantized data", check=_check_data_input),
    OpRule("Flatten", Kind.SHARED, "Flatten on quantized data", check=_check_data_input),
    OpRule("Squeeze", Kind.SHARED, "Squeeze on quantized data", check=_check_data_input),
    OpRule("Unsqueeze", Kind.SHARED, "Unsqueeze on quantized data", check=_check_data_input),
    OpRule("Slice", Kind.SHARED, "Slice on quantized data", check=_check_data_input),
    OpRule("Expand", Kind.SHARED, "Expand on quantized data", check=_check_data_input),
    OpRule("Tile", Kind.SHARED, "Tile on quantized data", check=_check_data_input),
    OpRule("DepthToSpace", Kind.SHARED, "DepthToSpace on quantized data", check=_check_data_input),
    OpRule("Resize", Kind.SHARED, "Resize (nearest) on quantized data", check=_check_resize),
    OpRule("Relu", Kind.ABSORBED, "absorbed into the producer's output range"),
    OpRule("Clip", Kind.ABSORBED, "absorbed into the producer's output range", check=_check_clip),
):
    register(_rule)


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The rule of a default-domain op, or None when quantcli has no INT8 form for it."""
    if node.domain not in ("", "ai.onnx"):
        return None
    return _RULES.get(node.op_type)


def activation_input_indices(rule: OpRule, node: onnx.NodeProto) -> list[int]:
    """Indices of the inputs that carry activations (all inputs for Concat)."""
    if rule.op_type == "Concat":
        return list(range(len(node.input)))
    return [i for i in rule.activation_inputs if i < len(node.input) and node.input[i]]
