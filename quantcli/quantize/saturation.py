"""INT8 weights that onnxruntime's x86 U8S8 kernels cannot saturate, at the least accuracy cost.

On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI), MLAS multiplies the raw u8 activation codes
by the s8 weights with VPMADDUBSW, which adds each pair of adjacent products along K into a
*saturating* int16 (QgemmU8X8KernelAvx2.S, ConvSymKernelAvx2.S); VNNI CPUs (VPDPBUSD) and ARM
accumulate in int32. Zero points are applied afterwards, so the kernel sees codes up to 255
whatever the zero point. A pair (w1, w2) against codes up to m is exact when

    m * (max(w1, 0) + max(w2, 0)) <= 32767   and   m * (min(w1, 0) + min(w2, 0)) >= -32768,

i.e. with m = 255, the same-sign sum of a pair stays within +-128 (`pair_limit`).

Which weights the kernels pair (probed on onnxruntime 1.32, an AVX2 EPYC; tests/test_saturation.py
emulates it): K runs in the order the packed weight is stored, and the products of K indices
(2j, 2j+1) share an int16.
- MatMul / Gemm (QLinearMatMul, QGemm, MatMulIntegerToFloat, DynamicQuantizeMatMul,
  MatMulInteger): K is the weight's input-feature axis (rows of a [K, N] weight, columns of a
  Gemm transB=1 [N, K] weight).
- QLinearConv: K is the filter flattened channels-last, (kernel position, input channel) with the
  input channel fastest, per group: an odd channel count pairs channel C-1 of one kernel position
  with channel 0 of the next. A depthwise convolution (one input and one output channel per group)
  runs on a kernel that widens to 16 bits first and never saturates; nor does ConvInteger.

The fix, per output channel (`fit_scales`): widen the channel's scale by a factor f in [1, f_max]
(f_max: no pair left over the limit), then bring each pair still over the limit back to it at the
least squared error (`fit_pairs`: the excess split between the two weights in inverse proportion
to their input channels' E[x^2], rounded on the line w1 + w2 = limit), and keep the f whose total
E[x^2]-weighted squared weight error (the layer's output error, inputs taken as uncorrelated) is
smallest. f = 1 clips only the offending pairs; f = f_max is a plain wider scale; 7-bit weights
(--reduce-range) are f = 2 for every channel. Measured on the sample models' layers, the chosen f
is close to f_max for most channels: clipping a pair of large weights costs more than a wider
scale. The plan stores the widened scales, the limit, the layout and the relative E[x^2];
quantizing a weight applies `fit_pairs` (a pure function of those and the values), so the
rewriter, bias correction and a replayed plan all get the same integers. The first and last
layers, where the limit costs the outputs most, keep full range on the exact U8U8 kernel instead
(quantize/exact_layers.py).
"""

from __future__ import annotations

import numpy as np

INT16_MAX = 32767
CONV = "conv"  # [O, I/g, *kernel]: K = kernel positions x input channels, channel fastest
KN = "kn"  # [..., K, N] (MatMul, Gemm transB=0)
NK = "nk"  # [N, K] (Gemm transB=1)
_GRID = 17  # scale factors tried per channel between 1 and f_max
_EXACT_ELEMENTS = 1 << 22  # above this, the rounding error of the pairs never over the limit is sampled


def pair_limit(max_code: int) -> int:
    """The largest same-sign pair sum (in weight codes) that m * sum cannot saturate int16."""
    return int(min(INT16_MAX // max_code, (INT16_MAX + 1) // max_code))


def u8_max_code(dtype_bits: int, signed: bool, scale: float, zero_point: int, rmax: float | None) -> int:
    """The largest u8 code an 8-bit activation with these parameters feeds the kernel.

    INT8 activations are shifted to UINT8 at load on x86 (QDQS8ToU8Transformer): code + 128.
    A calibrated range whose maximum is positive reaches the type's top code; one that never saw a
    positive value (all-zero calibration data: scale 1, zero point at the bottom) says nothing about
    the codes real inputs reach, up to the top one."""
    if dtype_bits != 8:
        raise ValueError("only 8-bit activations feed U8S8 kernels")
    shift = 128 if signed else 0
    if rmax is None or not scale > 0 or not rmax > 0:
        return 255
    top = int(np.clip(np.round(rmax / scale) + zero_point, -128 if signed else 0, 127 if signed else 255))
    return max(1, top + shift)


def kernel_rows(w: np.ndarray, layout: str) -> np.ndarray:
    """The weight as [output channels, K] with K in the order the kernel pairs it (a copy)."""
    if layout == CONV:
        o, i = w.shape[0], w.shape[1]
        return np.ascontiguousarray(w.reshape(o, i, -1).transpose(0, 2, 1).reshape(o, -1))
    if layout == KN:
        k = w.shape[-2]
        return np.ascontiguousarray(np.moveaxis(w, -2, -1).reshape(-1, k))
    if layout == NK:
        return np.ascontiguousarray(w.reshape(w.shape[0], -1))
    raise ValueError(f"unknown pair layout {layout!r}")


def from_kernel_rows(rows: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of kernel_rows."""
    if layout == CONV:
        o, i = shape[0], shape[1]
        return rows.reshape(o, -1, i).transpose(0, 2, 1).reshape(shape)
    if layout == KN:
        moved = (*shape[:-2], shape[-1], shape[-2])
        return np.moveaxis(rows.reshape(moved), -1, -2)
    return rows.reshape(shape)


def kernel_pairs(rows: np.ndarray) -> np.ndarray:
    """[R, K//2, 2] view of the paired columns (an odd K's last column is alone: never saturates)."""
    k = rows.shape[1] // 2 * 2
    return rows[:, :k].reshape(rows.shape[0], -1, 2)


def k_importance(
    channel_weights: np.ndarray | None, layout: str, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Each K position's importance (its input channel's E[x^2]) in kernel order, or None (all equal).
    `channel_weights`: one value per input channel of the weight (Conv: I/g; MatMul/Gemm: K)."""
    if channel_weights is None:
        return None
    e = np.asarray(channel_weights, dtype=np.float64).reshape(-1)
    if layout == CONV:
        positions = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
        if e.size != shape[1]:
            return None
        k = np.tile(e, positions)  # K = (position, channel), channel fastest
    else:
        if e.size != (shape[-2] if layout == KN else shape[-1]):
            return None
        k = e
    # A channel that was always zero still costs a little: ties go to the plain split.
    floor = 1e-6 * float(k.mean()) if k.size and k.mean() > 0 else 1.0
    return np.maximum(k, floor)


def pair_excess(q_rows: np.ndarray, limit: int) -> np.ndarray:
    """[R, K//2]: how far each pair's same-sign sum exceeds the limit (0 where it does not)."""
    pos, neg = same_sign_sums(q_rows)
    return np.maximum(np.maximum(pos - limit, neg - limit), 0)


def same_sign_sums(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[R, K//2] sums of each pair's positive parts and of its negative parts' magnitudes (two
    strided slices: a reduction over an axis of 2 is several times slower)."""
    k = rows.shape[1] // 2 * 2
    a, b = rows[:, 0:k:2], rows[:, 1:k:2]
    if a.dtype.kind in "iu":
        a, b = a.astype(np.int32), b.astype(np.int32)
    zero = a.dtype.type(0)
    pos = np.maximum(a, zero) + np.maximum(b, zero)
    neg = -(np.minimum(a, zero) + np.minimum(b, zero))
    return pos, neg


def _fit(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, limit: int, qmax: int) -> np.ndarray:
    """Magnitudes (a', limit - a') of pairs whose sum a + b exceeds the limit, minimising
    wa (a' - a)^2 + wb (b' - b)^2 on a' + b' = limit: the excess is split in proportion to the
    other's weight (all of it to a weight whose input is always zero), a' rounded to the nearest
    integer of the feasible range (the objective is a convex quadratic along the line)."""
    excess = a + b - limit
    first = a - excess * wb / (wa + wb)
    return np.clip(np.round(first), limit - qmax, qmax)


def fit_pairs(
    q_rows: np.ndarray,
    real_rows: np.ndarray,
    limit: int,
    importance: np.ndarray | None = None,
    qmax: int = 127,
) -> np.ndarray:
    """`q_rows` with every pair over the limit brought back to it at the least (importance-weighted)
    squared error; `real_rows` are the unrounded values in code units (w / scale, clipped to the
    weight range), `importance` one weight per K position (None: equal). A pair over the limit has
    one sign (|w| <= 127 < limit)."""
    over = pair_excess(q_rows, limit) > 0
    if not over.any():
        return q_rows
    q = q_rows.copy()
    qp, rp = kernel_pairs(q), kernel_pairs(real_rows)  # views into q / real_rows
    r, c = np.nonzero(over)
    sign = np.where(qp[r, c, 0].astype(np.int32) + qp[r, c, 1] > 0, 1.0, -1.0)
    a, b = np.abs(rp[r, c, 0].astype(np.float64)), np.abs(rp[r, c, 1].astype(np.float64))
    if importance is None:
        wa = wb = np.ones_like(a)
    else:
        w = kernel_pairs(np.asarray(importance, dtype=np.float64).reshape(1, -1))[0]
        wa, wb = w[c, 0], w[c, 1]
    first = _fit(a, b, wa, wb, limit, qmax)
    qp[r, c, 0] = (sign * first).astype(q.dtype)
    qp[r, c, 1] = (sign * (limit - first)).astype(q.dtype)
    return q


def fit_weight(
    q: np.ndarray, real: np.ndarray, layout: str, limit: int, channel_weights: np.ndarray | None = None
) -> np.ndarray:
    """fit_pairs on a whole weight tensor in its stored shape (`real`: w / scale, clipped)."""
    importance = k_importance(channel_weights, layout, q.shape)
    rows = fit_pairs(kernel_rows(q, layout), kernel_rows(real, layout), limit, importance)
    return from_kernel_rows(rows, layout, q.shape)


def fit_scales(
    w: np.ndarray,
    scale: np.ndarray,
    axis: int | None,
    layout: str,
    limit: int,
    channel_weights: np.ndarray | None = None,
    qmax: int = 127,
) -> np.ndarray:
    """Per-channel (or the one per-tensor) scale that, with fit_pairs, gives the smallest
    importance-weighted squared weight error under the pair limit; channels with no pair over it
    keep their scale.

    Each scale group tries _GRID factors f evenly spaced in [1, f_max] (f_max: no pair left over
    the limit); all groups at once, rows in chunks. On a layer above _EXACT_ELEMENTS weights the
    error is summed over an evenly strided sample of the pairs."""
    scale = np.asarray(scale, dtype=np.float64)
    w = np.asarray(w)
    # The weight's rows in its own precision (float64 per chunk: exact for float32 weights), so
    # that no float64 copy of the whole weight and its temporaries is held at once (a 4096x4096
    # layer's were ~0.7 GB).
    rows = kernel_rows(w if w.dtype in (np.float32, np.float64) else w.astype(np.float32), layout)
    importance = k_importance(channel_weights, layout, np.shape(w))
    if importance is None:
        importance = np.ones(rows.shape[1])
    if axis is None or scale.size == 1:
        groups = np.zeros(rows.shape[0], dtype=np.int64)  # one scale for every row
        per_group = np.atleast_1d(scale).reshape(1)
    else:
        groups = np.arange(rows.shape[0])
        per_group = scale.reshape(-1)

    def codes(r: np.ndarray, g: np.ndarray) -> np.ndarray:  # code units at the plain scale
        return np.clip(r.astype(np.float64) / per_group[g][:, None], -qmax, qmax)

    n_rows = rows.shape[0]
    k_even = rows.shape[1] // 2 * 2
    worst_row = np.zeros(n_rows)
    over_row = np.zeros(n_rows, dtype=bool)
    step_rows = max(1, _EXACT_ELEMENTS // max(1, rows.shape[1]))
    for a in range(0, n_rows, step_rows):
        x = codes(rows[a : a + step_rows], groups[a : a + step_rows])
        pos, neg = same_sign_sums(x)
        worst_row[a : a + step_rows] = np.maximum(pos.max(axis=1, initial=0), neg.max(axis=1, initial=0))
        over_row[a : a + step_rows] = pair_excess(np.round(x), limit).max(axis=1, initial=0) > 0
    n_groups = per_group.size
    worst = np.zeros(n_groups)
    np.maximum.at(worst, groups, worst_row)
    at_risk = np.zeros(n_groups, dtype=bool)
    np.logical_or.at(at_risk, groups, over_row)
    if not at_risk.any():
        return scale
    f_max = np.maximum(1.0, (worst + 0.5) / (limit - 0.5))  # round(worst / f) <= limit
    kept = np.flatnonzero(at_risk[groups])
    g = groups[kept]
    cols, imp = np.arange(k_even), importance[:k_even]  # an odd K's last column: plain rounding at any f
    if kept.size * k_even > _EXACT_ELEMENTS:  # a strided sample of the pairs: the same columns for every f
        step = kept.size * k_even // _EXACT_ELEMENTS + 1
        cols = (np.arange(0, k_even // 2, step)[:, None] * 2 + np.arange(2)).reshape(-1)
        imp = imp[cols]
    x = codes(rows[np.ix_(kept, cols)], g)
    chunk = max(1, _EXACT_ELEMENTS // (8 * max(1, x.shape[1])))
    starts = range(0, x.shape[0], chunk)
    # The pairs over the limit at f = 1 are the only ones a wider scale can leave over it (rounding
    # is monotone: |round(v / f)| <= |round(v)| for f >= 1): each factor fits those alone, which is
    # what fit_pairs does with the whole chunk (the same pairs, the same arithmetic), at a fraction
    # of the passes.
    over_at_1 = [np.nonzero(pair_excess(np.round(x[a : a + chunk]), limit) > 0) for a in starts]
    best_err = np.full(n_groups, np.inf)
    best_f = np.ones(n_groups)
    for t in np.linspace(0.0, 1.0, _GRID):
        f_group = 1.0 + t * (f_max - 1.0)
        err = np.zeros(n_groups)
        for start, candidates in zip(starts, over_at_1, strict=True):
            xs, gs = x[start : start + chunk], g[start : start + chunk]
            f = f_group[gs][:, None]
            real = np.clip(xs / f, -qmax, qmax)
            q = _fit_over(np.round(real), real, candidates, limit, imp, qmax)
            np.add.at(err, gs, np.sum(imp * (q * f - xs) ** 2, axis=1))
        better = at_risk & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_f = np.where(better, f_group, best_f)
    return (per_group * best_f).astype(np.float32).reshape(np.shape(scale))


def _fit_over(
    q: np.ndarray,
    real: np.ndarray,
    candidates: tuple[np.ndarray, np.ndarray],
    limit: int,
    importance: np.ndarray,
    qmax: int,
) -> np.ndarray:
    """fit_pairs(q, real, limit, importance, qmax) when only the pairs `candidates` (rows, pair
    columns) can be over the limit: `q` fitted in place."""
    rows, pairs = candidates
    if rows.size == 0:
        return q
    qp, rp = kernel_pairs(q), kernel_pairs(real)
    first, second = qp[rows, pairs, 0], qp[rows, pairs, 1]
    zero = first.dtype.type(0)
    pos = np.maximum(first, zero) + np.maximum(second, zero)
    neg = -(np.minimum(first, zero) + np.minimum(second, zero))
    over = np.maximum(np.maximum(pos - limit, neg - limit), 0) > 0
    r, c = rows[over], pairs[over]
    if r.size == 0:
        return q
    sign = np.where(qp[r, c, 0].astype(np.int32) + qp[r, c, 1] > 0, 1.0, -1.0)
    a, b = np.abs(rp[r, c, 0].astype(np.float64)), np.abs(rp[r, c, 1].astype(np.float64))
    w = kernel_pairs(np.asarray(importance, dtype=np.float64).reshape(1, -1))[0]
    fitted = _fit(a, b, w[c, 0], w[c, 1], limit, qmax)
    qp[r, c, 0] = (sign * fitted).astype(q.dtype)
    qp[r, c, 1] = (sign * (limit - fitted)).astype(q.dtype)
    return q


FIT_VALUES = 1 << 20  # weight values quantized and fitted at a time (float64 temporaries of 8 MB)


def quantize_weight(values: np.ndarray, params) -> np.ndarray:  # noqa: ANN001 - plan.TensorParams
    """An INT8 weight quantized with its parameters, pairs fitted to `params.pair_limit` when set:
    the one function the rewriters and bias correction quantize weights with. The fit works on
    slices of output channels (each channel's pairs are its own), so a big weight's float64
    temporaries stay small: the same integers as one pass over the whole weight."""
    from quantcli.quantize.params import quantize_array

    scale, zp = params.arrays()
    if params.pair_limit is None:
        return quantize_array(values, scale, zp, params.dtype, params.axis, symmetric=True)
    rows = values.ndim - 1 if params.pair_layout == KN else 0  # the axis of the kernel's rows
    per_channel = params.axis is not None and scale.size > 1
    if values.ndim == 0 or (per_channel and params.axis % values.ndim != rows):
        return _fitted(values, scale, zp, params)
    n = values.shape[rows]
    step = max(1, FIT_VALUES // max(1, values.size // max(1, n)))
    if step >= n:
        return _fitted(values, scale, zp, params)
    out = np.empty(values.shape, dtype=params.dtype.numpy)
    for start in range(0, n, step):
        part = [slice(None)] * values.ndim
        part[rows] = slice(start, start + step)
        s, z = (scale[start : start + step], zp[start : start + step]) if per_channel else (scale, zp)
        out[tuple(part)] = _fitted(values[tuple(part)], s, z, params)
    return out


def _fitted(values: np.ndarray, scale: np.ndarray, zp: np.ndarray, params) -> np.ndarray:  # noqa: ANN001
    from quantcli.quantize.params import _along, quantize_array

    q = quantize_array(values, scale, zp, params.dtype, params.axis, symmetric=True)
    qmin, qmax = params.dtype.bounds(True)
    s, z = _along(scale, zp, values.ndim, params.axis)
    real = np.clip(values.astype(np.float64) / s + z, qmin, qmax)
    return fit_weight(q, real, params.pair_layout, params.pair_limit, params.pair_weights)


def saturating_pairs(q: np.ndarray, layout: str, limit: int) -> int:
    """How many pairs of an INT8 weight (stored shape) exceed the limit: 0 means no input can
    saturate the int16 sums."""
    return int(np.count_nonzero(pair_excess(kernel_rows(q, layout), limit)))


def limit_pairs(weight, stored: np.ndarray, layout: str, activation, channel_weights=None) -> None:  # noqa: ANN001 - TensorParams
    """Make an INT8 weight's parameters saturation-safe for the activation it is multiplied with:
    the pair limit from the activation's largest code, the scales from fit_scales. `stored`: the
    weight as the rewriter will store it (its K order is the kernel's); `channel_weights`: its input
    channels' E[x^2] in that order (None: all equal)."""
    rmax = activation.range[1] if activation.range else None
    m = u8_max_code(
        activation.dtype.bits, activation.dtype.signed, activation.scale[0], activation.zero_point[0], rmax
    )
    limit = pair_limit(m)
    if limit >= 2 * weight.dtype.bounds(True)[1]:
        return  # no pair of codes can reach it
    if channel_weights is not None:
        cw = np.asarray(channel_weights, dtype=np.float64).reshape(-1)
        # relative, 4 significant digits: the plan stays readable and replays the same integers
        cw = cw / cw.max() if cw.size and cw.max() > 0 else None
        channel_weights = None if cw is None else [float(f"{v:.4g}") for v in cw]
        if k_importance(channel_weights, layout, stored.shape) is None:
            channel_weights = None  # a shape the statistics do not fit: equal weights
    scale = np.asarray(weight.scale, dtype=np.float32)
    axis = weight.axis
    fitted = fit_scales(
        stored, scale if axis is not None else scale.reshape(()), axis, layout, limit, channel_weights
    )
    weight.scale = np.atleast_1d(fitted).astype(np.float32).tolist()
    weight.pair_limit = limit
    weight.pair_layout = layout
    weight.pair_weights = channel_weights
