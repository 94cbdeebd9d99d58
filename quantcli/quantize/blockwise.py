"""Block-wise 4-bit weight maths: per-block scales and zero points with an MSE clipping search, and
the packing onnxruntime's MatMulNBits reads.

A weight W [K, N] (MatMul's layout) is cut, per output column n, into blocks of `block_size`
consecutive values along K; K is padded with zeros to a multiple of the block size. Block b of
column n has a scale s[n, b] and a zero point z[n, b] in [0, 15]:

    q = clamp(round(w / s) + z, 0, 15),    w ~ (q - z) * s

Asymmetric blocks store z (the block's range always includes 0, so 0.0 is exact and the padding
adds no error). Symmetric blocks store none: MatMulNBits then uses z = 8, so q - 8 is in [-8, 7],
and the scale takes the sign that puts the block's largest-magnitude value on the -8 side (as
onnxruntime's own quantizer does), which gives that side 8 levels instead of 7.

Clipping: each block's range (asymmetric [r * min, r * max], symmetric r * its largest magnitude)
is searched over ratios r from 1.0 down to CLIP_MIN, and the ratio with the smallest squared
quantize-dequantize error of the block wins (ties go to the wider range). An all-zero block gets
scale 1 and is stored exactly.

Layout (onnxruntime docs/ContribOperators.md, com.microsoft.MatMulNBits): B is uint8
[N, n_blocks, block_size / 2], two values per byte along K, the first in the low nibble; scales are
float32 [N, n_blocks]; zero points are uint8 [N, ceil(n_blocks / 2)], packed the same way per
column.
"""

from __future__ import annotations

import numpy as np

BITS = 4
QMAX = 2**BITS - 1  # 15
SYMMETRIC_ZERO_POINT = 8  # MatMulNBits' default when no zero points are given
CLIP_MIN = 0.7
CLIP_STEPS = 16
CLIP_GRID = tuple(float(r) for r in np.linspace(1.0, CLIP_MIN, CLIP_STEPS))
_TINY = float(np.finfo(np.float32).tiny)
_CHUNK_VALUES = 1 << 20  # values searched at once: bounds the temporaries on big weights


def n_blocks(k: int, block_size: int) -> int:
    return -(-k // block_size)


def packed_bytes(k: int, n: int, block_size: int, symmetric: bool) -> int:
    """Bytes of one MatMulNBits weight: packed values, float32 scales, packed zero points."""
    nb = n_blocks(k, block_size)
    return n * nb * block_size // 2 + 4 * n * nb + (0 if symmetric else n * n_blocks(nb, 2))


def to_blocks(w_nk: np.ndarray, block_size: int) -> np.ndarray:
    """A weight in [N, K] layout (rows are output columns), zero-padded along K, as float32
    [N, n_blocks, block_size]."""
    n, k = w_nk.shape
    nb = n_blocks(k, block_size)
    padded = np.zeros((n, nb * block_size), dtype=np.float32)
    padded[:, :k] = w_nk
    return padded.reshape(n, nb, block_size)


def _asymmetric(x: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(x.min(axis=-1), 0.0) * np.float32(ratio)
    hi = np.maximum(x.max(axis=-1), 0.0) * np.float32(ratio)
    scale = (hi - lo) / np.float32(QMAX)
    scale = np.where(scale > _TINY, scale, np.float32(1.0)).astype(np.float32)
    zero_point = np.clip(np.round(-lo / scale), 0, QMAX).astype(np.uint8)
    return scale, zero_point


def _symmetric(x: np.ndarray, ratio: float) -> np.ndarray:
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    scale = peak * np.float32(-ratio / SYMMETRIC_ZERO_POINT)
    return np.where(np.abs(scale) > _TINY, scale, np.float32(1.0)).astype(np.float32)


def quantize_blocks(blocks: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """uint8 values in [0, 15] of float32 blocks [..., block_size] with per-block scale and zero
    point [...] (None: symmetric, the implicit zero point 8)."""
    z = np.float32(SYMMETRIC_ZERO_POINT) if zero_point is None else zero_point.astype(np.float32)[..., None]
    q = np.round(blocks / scale[..., None]) + z
    return np.clip(q, 0, QMAX).astype(np.uint8)


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    z = np.float32(SYMMETRIC_ZERO_POINT) if zero_point is None else zero_point.astype(np.float32)[..., None]
    return (q.astype(np.float32) - z) * scale[..., None]


def _block_error(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    diff = dequantize_blocks(quantize_blocks(x, scale, zero_point), scale, zero_point) - x
    return np.einsum("...i,...i->...", diff, diff)


def block_qparams(
    blocks: np.ndarray, symmetric: bool, grid: tuple[float, ...] = CLIP_GRID
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-block scale (float32 [N, n_blocks]) and zero point (uint8, None when symmetric) whose
    clipping ratio, among `grid`, gives each block the smallest squared error; `grid=(1.0,)` is
    plain min/max."""
    n = blocks.shape[0]
    scale = np.empty(blocks.shape[:2], dtype=np.float32)
    zero_point = None if symmetric else np.empty(blocks.shape[:2], dtype=np.uint8)
    rows = max(1, _CHUNK_VALUES // max(1, blocks[0].size))
    for start in range(0, n, rows):
        x = blocks[start : start + rows]
        best_err = np.full(x.shape[:2], np.inf, dtype=np.float32)
        best_scale = np.ones(x.shape[:2], dtype=np.float32)
        best_zp = None if symmetric else np.zeros(x.shape[:2], dtype=np.uint8)
        for ratio in grid:
            if symmetric:
                s, z = _symmetric(x, ratio), None
            else:
                s, z = _asymmetric(x, ratio)
            err = _block_error(x, s, z)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, s, best_scale)
            if z is not None:
                best_zp = np.where(better, z, best_zp)
        scale[start : start + rows] = best_scale
        if zero_point is not None:
            zero_point[start : start + rows] = best_zp
    return scale, zero_point


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 values in [0, 15], two per byte along the last axis (first in the low nibble); an odd
    last axis is padded with a 0."""
    v = values.astype(np.uint8)
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], 1), dtype=np.uint8)], axis=-1)
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The first `count` values along the last axis of pack_nibbles' output."""
    v = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return v[..., :count]
