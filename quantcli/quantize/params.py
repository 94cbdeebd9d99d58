"""Scale and zero-point maths shared by every mode.

Affine mapping: q = clamp(round(x / scale) + zero_point, qmin, qmax), x ~ (q - zero_point) * scale.
Edge cases (as in torch.ao's observers): the range always includes 0 so that 0.0 is exact; if
min == max == 0 the scale is 1.0 and the zero point is 0 (or qmin for unsigned asymmetric).
Symmetric INT8 uses [-127, 127] so that zero_point is 0 and -x quantizes to -q; asymmetric INT16
uses all of [-32768, 32767], its zero point anywhere in it (-32768 for a range that starts at 0).
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from onnx import TensorProto, helper


class QType(str, Enum):
    """Integer types a tensor can be quantized to."""

    UINT8 = "uint8"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    UINT4 = "uint4"  # weights-int4: MatMulNBits blocks, held in uint8 arrays and packed two per byte

    @property
    def numpy(self) -> type[np.integer]:
        return np.uint8 if self is QType.UINT4 else np.dtype(self.value).type

    @property
    def onnx(self) -> int:
        if self is QType.UINT4:
            return TensorProto.UINT4
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.value))

    @property
    def bits(self) -> int:
        return 4 if self is QType.UINT4 else np.dtype(self.value).itemsize * 8

    @property
    def signed(self) -> bool:
        return self is not QType.UINT4 and np.dtype(self.value).kind == "i"

    def bounds(self, symmetric: bool) -> tuple[int, int]:
        """[qmin, qmax]; symmetric signed types drop the most negative value so that -q exists."""
        if self is QType.UINT4:
            return 0, 15
        info = np.iinfo(self.value)
        if self.signed and symmetric:
            return int(info.min) + 1, int(info.max)
        return int(info.min), int(info.max)


def calculate_qparams(
    rmin: np.ndarray | float,
    rmax: np.ndarray | float,
    qtype: QType,
    symmetric: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (qtype) for ranges [rmin, rmax], element-wise over channels."""
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    qmin, qmax = qtype.bounds(symmetric)
    if symmetric:
        absmax = np.maximum(np.abs(rmin), np.abs(rmax))
        scale = absmax / ((qmax - qmin) / 2.0)
        zero_point = np.zeros_like(scale) if qtype.signed else np.full_like(scale, (qmax + 1) // 2)
    else:
        scale = (rmax - rmin) / float(qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zero_point = np.where(scale > 0, np.round(qmin - rmin / np.where(scale > 0, scale, 1)), qmin)
    degenerate = ~(scale > np.finfo(np.float32).tiny)
    scale = np.where(degenerate, 1.0, scale)
    if not symmetric:
        zero_point = np.where(degenerate, 0 if qtype.signed else qmin, zero_point)
    zero_point = np.clip(zero_point, qmin, qmax)
    return scale.astype(np.float32), zero_point.astype(qtype.numpy)


def quantize_array(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray,
    qtype: QType,
    axis: int | None,
    symmetric: bool = True,
) -> np.ndarray:
    """Quantize `x` per tensor (axis None) or per channel along `axis`."""
    scale, zp = _along(scale, zero_point, x.ndim, axis)
    qmin, qmax = qtype.bounds(symmetric)
    q = np.round(x.astype(np.float64) / scale) + zp
    return np.clip(q, qmin, qmax).astype(qtype.numpy)


def dequantize_array(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None
) -> np.ndarray:
    """(q - zero_point) * scale in float64, per tensor (axis None) or per channel along `axis`."""
    scale, zp = _along(scale, zero_point, q.ndim, axis)
    return (q.astype(np.float64) - zp) * scale


def _along(
    scale: np.ndarray, zero_point: np.ndarray, ndim: int, axis: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point as float64, shaped to broadcast along `axis` of an `ndim` tensor."""
    scale = np.asarray(scale, dtype=np.float64)
    zp = np.asarray(zero_point, dtype=np.float64)
    if axis is not None and scale.ndim == 1 and scale.size > 1:
        shape = [1] * ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    return scale, zp


REDUCED_QMAX = 63  # 7-bit weights: u8 x s7 pairs cannot saturate VPMADDUBSW's int16 sums


def weight_qparams(
    w: np.ndarray,
    axis: int | None,
    qtype: QType = QType.INT8,
    symmetric: bool = True,
    reduce_range: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis) or per-tensor (axis None) min/max parameters of a weight; with
    `reduce_range` the symmetric INT8 weights use [-63, 63] (for CPUs without VNNI)."""
    if axis is None or w.ndim == 0:
        scale, zp = calculate_qparams(np.min(w, initial=0.0), np.max(w, initial=0.0), qtype, symmetric)
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        scale, zp = calculate_qparams(w.min(axis=reduce), w.max(axis=reduce), qtype, symmetric)
    if reduce_range:
        scale = (scale * (qtype.bounds(True)[1] / REDUCED_QMAX)).astype(np.float32)
    return scale, zp


def weight_qparams_mse(
    w: np.ndarray, axis: int | None, qtype: QType = QType.INT8, grid: int = 32, reduce_range: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric parameters whose clipping (a fraction of each channel's |max|, searched on a grid
    from 0.5 to 1) minimises the channel's squared quantize-dequantize error."""
    x = np.asarray(w, dtype=np.float32)
    if axis is None or x.ndim == 0:
        x = x.reshape(1, -1)
    else:
        x = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    absmax = np.abs(x).max(axis=1)
    qmax = REDUCED_QMAX if reduce_range else qtype.bounds(True)[1]
    best_err = np.full(x.shape[0], np.inf)
    best_scale = absmax / qmax
    for ratio in np.linspace(0.5, 1.0, grid):
        scale = np.maximum(absmax * ratio / qmax, np.finfo(np.float32).tiny)[:, None]
        err = np.sum((np.clip(np.round(x / scale), -qmax, qmax) * scale - x) ** 2, axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale[:, 0], best_scale)
    scale = np.where(best_scale > np.finfo(np.float32).tiny, best_scale, 1.0).astype(np.float32)
    zero_point = np.zeros_like(scale, dtype=qtype.numpy)
    if axis is None or np.ndim(w) == 0:
        return scale.reshape(()), zero_point.reshape(())
    return scale, zero_point
