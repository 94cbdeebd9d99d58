"""Bias correction: cancel the mean shift that INT8 weights add to each output channel.

Rounding a weight channel to INT8 leaves an error dW whose effect on the output does not average
out when the channel has few weights (a depthwise 3x3 kernel has 9): E[(W + dW) x] - E[W x] =
dW . E[x], a constant per output channel that every later layer inherits. Subtracting it from the
bias (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
2019, section 4.2, with E[x] measured on the calibration samples instead of derived from
BatchNorm) removes it at no cost at inference. Measured on EfficientNet-Lite0, INT8 per-channel
weights alone (activations float, 100 held-out images): logits SQNR 18.8 -> 26.6 dB, top-1
agreement with FP32 90% -> 96%.

The correction is computed at plan time and stored in the plan with the bias's parameters
(TensorParams.correction), so a saved plan replays it; the rewriter quantizes bias - correction.
E[x] is the per-channel mean of the node's float input over the calibration samples, padding
ignored (calibration/collect.py: Ranges.channel_means).
"""

from __future__ import annotations

import numpy as np
import onnx

from quantcli.graph import attr
from quantcli.quantize.params import dequantize_array
from quantcli.quantize.plan import TensorParams
from quantcli.quantize.saturation import quantize_weight


def dequantized(w: np.ndarray, params: TensorParams) -> np.ndarray:
    """The weight as the INT8 kernel sees it: quantized with `params` (pairs fitted to its limit),
    then dequantized (float64)."""
    scale, zp = params.arrays()
    return dequantize_array(quantize_weight(w, params), scale, zp, params.axis)


def output_shift(
    node: onnx.NodeProto,
    w: np.ndarray,
    params: TensorParams,
    mean: np.ndarray,
    w_dequantized: np.ndarray | None = None,
) -> np.ndarray | None:
    """E[output] of the node with INT8 weights minus with float weights, per output channel, in the
    bias's units (divided by Gemm's beta); None when the shapes do not fit the formula.
    `w_dequantized`: the INT8 weight as the kernel sees it, when the caller computed it (a Gemm
    weight stored in another order)."""
    if w_dequantized is None:
        w_dequantized = dequantized(w, params)
    dw = w_dequantized - w.astype(np.float64)
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    if node.op_type == "Conv":
        if w.ndim < 3:
            return None
        groups = int(attr(node, "group", 1))
        out_ch, in_per_group = w.shape[0], w.shape[1]
        if out_ch % groups or mean.size != groups * in_per_group:
            return None
        per_kernel = dw.reshape(out_ch, in_per_group, -1).sum(axis=2)  # [O, I/g]
        per_group = per_kernel.reshape(groups, out_ch // groups, in_per_group)
        return np.einsum("gok,gk->go", per_group, mean.reshape(groups, in_per_group)).reshape(out_ch)
    if node.op_type == "Gemm":
        if w.ndim != 2:
            return None
        b = dw.T if attr(node, "transB", 0) else dw  # [K, N]
        beta = float(attr(node, "beta", 1.0))
        if b.shape[0] != mean.size or beta == 0.0:
            return None
        return float(attr(node, "alpha", 1.0)) * (mean @ b) / beta
    return None
