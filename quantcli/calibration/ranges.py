"""Calibration methods: a clipping range [lo, hi] from an observer's statistics.

- minmax: the observed range.
- percentile: asymmetric (default, for UINT8 activations) clips each tail at (100 - p)% of the
  mass: lo = the (100 - p)-th percentile of x, hi = the p-th; symmetric (INT8) clips |x| at its
  p-th percentile. Resolution: one histogram bin.
- entropy: TensorRT's KL-divergence method on the histogram of |x|: for each candidate threshold
  the reference distribution P (bins below it, with the clipped tail folded into its last bin) is
  compared with its quantized version Q (P merged into `levels` equal groups, then spread back over
  the non-empty bins); the threshold with the smallest KL(P || Q) wins.
- mse: the clipping range that minimises the expected squared quantize-dequantize error over the
  histogram (step^2 / 12 for values inside the range, the clipping distance squared outside),
  searched over ranges [a * min, a * max] for a in (0, 1].
Every range is finally intersected with the observed [min, max] and made to include 0.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np

from quantcli.calibration.observers import HistogramObserver, MinMaxObserver


class CalibMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    MSE = "mse"


def make_observer(method: CalibMethod, bins: int, values: int | None = None) -> MinMaxObserver:
    """The observer a method needs; `values`: most values a histogram bins of one update."""
    return MinMaxObserver() if method is CalibMethod.MINMAX else HistogramObserver(bins, values)


def compute_range(
    observer: MinMaxObserver,
    method: CalibMethod,
    *,
    symmetric: bool = False,
    percentile: float = 99.99,
    levels: int = 256,
) -> tuple[float, float]:
    """The clipping range the method chooses from the observer's statistics."""
    lo, hi = observer.range()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return lo, hi  # inf/NaN seen: no clipping makes it a range to quantize (the planner keeps it float)
    if method is CalibMethod.MINMAX or not isinstance(observer, HistogramObserver) or observer.width == 0:
        return lo, hi
    if method is CalibMethod.PERCENTILE:
        clip_lo, clip_hi = percentile_range(observer, percentile, symmetric)
    elif method is CalibMethod.ENTROPY:
        t = entropy_threshold(*abs_histogram(observer), levels=levels // 2 if lo < 0 < hi else levels)
        clip_lo, clip_hi = -t, t
    else:
        clip_lo, clip_hi = mse_range(observer, levels=levels, symmetric=symmetric)
    return max(lo, clip_lo), min(hi, clip_hi)


def percentile_range(h: HistogramObserver, p: float, symmetric: bool) -> tuple[float, float]:
    if symmetric:
        counts, width = abs_histogram(h)
        t = _quantile(counts, 0.0, width, p / 100.0)
        return -t, t
    tail = 1.0 - p / 100.0
    return _quantile(h.counts, h.lo, h.width, tail), _quantile(h.counts, h.lo, h.width, 1.0 - tail)


def _quantile(counts: np.ndarray, lo: float, width: float, q: float) -> float:
    """The value below which a fraction q of the histogram's mass lies (linear inside a bin)."""
    cdf = np.cumsum(counts)
    total = cdf[-1]
    if total == 0:
        return lo
    target = q * total
    i = int(np.searchsorted(cdf, target, side="left"))
    i = min(i, len(counts) - 1)
    below = cdf[i - 1] if i > 0 else 0.0
    frac = (target - below) / counts[i] if counts[i] else 0.0
    return lo + width * (i + float(np.clip(frac, 0.0, 1.0)))


def abs_histogram(h: HistogramObserver) -> tuple[np.ndarray, float]:
    """The histogram of |x| from 0, in bins as wide as the observer's (so no bin is left empty by
    re-binning: negative bins fold onto the positive side one for one)."""
    edges = h.edges()
    centers = np.abs((edges[:-1] + edges[1:]) / 2)
    index = np.floor(centers / h.width).astype(np.int64)
    counts = np.bincount(index, weights=h.counts, minlength=int(index.max()) + 1)
    return counts, h.width


def entropy_threshold(counts: np.ndarray, width: float, *, levels: int = 128) -> float:
    """TensorRT's KL calibration on a histogram of |x| (bins of `width` starting at 0)."""
    n = len(counts)
    if n <= levels or counts.sum() == 0:
        return width * n
    # The exact zeros of a ReLU pile up in bin 0 and make KL favour the smallest threshold; like
    # NVIDIA's pytorch-quantization, give bin 0 the mass of its neighbour before the search.
    counts = counts.astype(np.float64).copy()
    counts[0] = counts[1]
    best_i, best_kl = n, np.inf

    # Candidate thresholds every bin from `levels` up (stride keeps it O(n^2 / stride)).
    stride = max(1, n // 512)
    for i in range(levels, n + 1, stride):
        p = counts[:i].astype(np.float64).copy()
        p[-1] += counts[i:].sum()
        nonzero = p > 0
        # Merge i bins into `levels` groups, then spread each group's mass over its non-empty bins.
        group = (np.arange(i) * levels) // i
        merged = np.bincount(group, weights=counts[:i], minlength=levels)
        used = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, merged[group] / np.maximum(used[group], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        pn, qn = p / p_sum, q / q_sum
        mask = pn > 0
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return width * best_i


def mse_range(h: HistogramObserver, *, levels: int = 256, symmetric: bool = False) -> tuple[float, float]:
    """The range [a*lo, a*hi] minimising the expected quantize-dequantize squared error."""
    edges = h.edges()
    centers = (edges[:-1] + edges[1:]) / 2
    weights = h.counts
    lo, hi = min(h.min, 0.0), max(h.max, 0.0)
    if symmetric:
        m = max(-lo, hi)
        lo, hi = -m, m
    alphas = np.linspace(0.05, 1.0, 96)
    best, best_err = (lo, hi), np.inf
    for a in alphas:
        clo, chi = a * lo, a * hi
        step = (chi - clo) / (levels - 1)
        if step <= 0:
            continue
        # Inside the range: uniform rounding error step^2 / 12; outside: the clipping distance.
        clipped = np.clip(centers, clo, chi)
        inside = (centers >= clo) & (centers <= chi)
        err = float(np.sum(weights * np.where(inside, step * step / 12.0, (centers - clipped) ** 2)))
        if err < best_err:
            best_err, best = err, (clo, chi)
    return best
