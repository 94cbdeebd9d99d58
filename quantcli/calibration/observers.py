"""Observers fold activation batches into running statistics; `calibration/ranges.py` turns the
statistics into a clipping range with one of the calibration methods.

MinMaxObserver keeps two numbers. HistogramObserver keeps a fixed number of bins over a range that
grows with the data: when a batch falls outside it, the bin width is multiplied by an integer and
the range is extended by whole old bins, so every old bin merges exactly into one new bin (no mass
is smeared between bins, only resolution is lost, as in any streaming histogram). Memory is the
number of bins, whatever the number of samples.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 2048
# Values binned at a time: the float64 temporaries of a chunk stay in cache. Binning in chunks is
# 2.3x faster than np.histogram on the same 4M values (7.7 vs 17.6 ms), and on EfficientNet-Lite0
# np.histogram was 10.4 s of a 14.0 s conversion (cProfile).
CHUNK = 1 << 16
# A larger batch is binned from an evenly strided subset of this many values or fewer (an odd
# stride, so that it walks across power-of-two rows and channels), each counted stride times; the
# extremes stay exact (they come from every value). Binning costs ~2 ns a value (np.bincount), as
# much as a forward pass on EfficientNet-Lite0's 12M activation values a sample; 2^18 values a
# tensor a sample still give the clipping search tens of millions over a calibration set.
HISTOGRAM_VALUES = 1 << 18


class MinMaxObserver:
    """Running minimum and maximum of every value seen (MinMax calibration)."""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self._fold(x)

    def _fold(self, x: np.ndarray) -> tuple[float, float]:
        """Fold a non-empty batch's extremes into the running ones; returns them (NaN when the
        batch holds a NaN: NaN propagates through min and max)."""
        lo, hi = float(np.min(x)), float(np.max(x))
        if math.isnan(lo) or math.isnan(hi):
            self.has_nan = True
        else:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
        self.count += 1
        return lo, hi

    has_nan = False

    def range(self) -> tuple[float, float]:
        """The observed [min, max]; (0, 0) when nothing was seen; NaN when a NaN was seen (the
        planner then keeps the tensor in float)."""
        if self.count == 0:
            return 0.0, 0.0
        if self.has_nan:
            return math.nan, math.nan
        return self.min, self.max


class HistogramObserver(MinMaxObserver):
    """A streaming histogram of the values seen, plus their exact min and max."""

    def __init__(self, bins: int = DEFAULT_BINS, values: int | None = None) -> None:
        super().__init__()
        self.values = values  # most values binned of one update (None: HISTOGRAM_VALUES)
        if bins < 16:
            raise ValueError(f"a histogram needs at least 16 bins, not {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.lo = 0.0
        self.width = 0.0  # 0 until the first non-constant data fixes a scale
        self.finite_max = -math.inf  # the top of the data (the histogram's top may lie above it)

    @property
    def hi(self) -> float:
        return self.lo + self.width * self.bins

    def edges(self) -> np.ndarray:
        return self.lo + self.width * np.arange(self.bins + 1)

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = np.asarray(x, dtype=np.float32).ravel()
        bmin, bmax = self._fold(x)  # exact min/max, NaN and inf recorded there
        if not (math.isfinite(bmin) and math.isfinite(bmax)):  # the histogram holds finite values
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            bmin, bmax = float(x.min()), float(x.max())
        self.finite_max = max(self.finite_max, bmax)
        weight = 1
        most = HISTOGRAM_VALUES if self.values is None else self.values
        if x.size > most:
            weight = math.ceil(x.size / most) | 1
            x = x[::weight]
        if self.width == 0.0:
            lo = min(bmin, self.lo) if self.counts[0] else bmin
            hi = max(bmax, self.lo) if self.counts[0] else bmax
            if lo == hi:
                # Constant so far: remember the mass at that value until a range appears.
                self.lo = lo
                self.counts[0] += x.size * weight
                return
            self._first_range(lo, hi)
        elif bmin < self.lo or bmax > self.hi:
            self._grow(bmin, bmax)
        self.counts += self._bin_counts(x) * weight

    def _bin_counts(self, x: np.ndarray) -> np.ndarray:
        """How many of `x` (all within the histogram's range) fall in each bin: bin k holds
        edges[k] <= v < edges[k + 1], the top bin also its upper edge, as np.histogram counts."""
        counts = np.zeros(self.bins, dtype=np.int64)
        inverse = 1.0 / self.width
        # One float64 and one index buffer reused by every chunk; the subtraction casts x to float64
        # on the way (exactly, as astype would), and the top edge's index (the bins past the last,
        # which rounding can reach) is folded into the top bin after counting, not clamped before.
        position = np.empty(min(x.size, CHUNK), dtype=np.float64)
        index = np.empty(position.size, dtype=np.intp)
        for start in range(0, x.size, CHUNK):
            chunk = x[start : start + CHUNK]
            p, i = position[: chunk.size], index[: chunk.size]
            np.subtract(chunk, self.lo, out=p, dtype=np.float64)
            np.multiply(p, inverse, out=p)
            np.copyto(i, p, casting="unsafe")  # truncation is floor: every value is >= lo
            found = np.bincount(i, minlength=self.bins)
            counts += found[: self.bins]
            if found.size > self.bins:
                counts[-1] += found[self.bins :].sum()
        return counts

    def _first_range(self, lo: float, hi: float) -> None:
        mass = self.counts[0]
        constant_at = self.lo
        self.counts[:] = 0
        self.lo = lo
        self.width = (hi - lo) / self.bins
        if mass:
            self.counts[self._index(constant_at)] += mass

    def _index(self, value: float) -> int:
        return int(min(self.bins - 1, max(0, math.floor((value - self.lo) / self.width))))

    def _grow(self, bmin: float, bmax: float) -> None:
        """Extend the range to cover [bmin, bmax] by whole old bins and an integer width factor."""
        w = self.width
        shift = math.ceil((self.lo - bmin) / w) if bmin < self.lo else 0  # old bins added below
        new_lo = self.lo - shift * w
        # Size the new bins from the data's top, not the old histogram's: bins above the data are
        # empty, so merging stays exact, and the range does not double with every growth below.
        factor = max(1, math.ceil((max(bmax, self.finite_max) - new_lo) / (self.bins * w) - 1e-12))
        if new_lo + factor * w * self.bins < bmax:  # float rounding at the edge
            factor += 1
        # Align the new bins on a multiple of the factor so old bins merge exactly.
        old_index = np.arange(self.bins) + shift
        new_counts = np.zeros(self.bins, dtype=np.float64)
        np.add.at(new_counts, np.minimum(old_index // factor, self.bins - 1), self.counts)
        self.counts = new_counts
        self.lo = new_lo
        self.width = w * factor


class ChannelMeanObserver:
    """The running mean and mean square of each channel (`axis`, negative from the end) over every
    other axis: the E[x] that bias correction (quantize/bias_correction.py) multiplies by the
    weights' quantization error, and the E[x^2] that weighs each input channel's share of a
    layer's output error (quantize/saturation.py)."""

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis
        self.sums: np.ndarray | None = None
        self.squares: np.ndarray | None = None
        self.count = 0  # values per channel seen

    def update(self, x: np.ndarray) -> None:
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        if x.ndim <= axis or axis < 0 or x.size == 0:
            return
        # [outer, C, inner] views (no copy of a contiguous x); einsum squares without a temporary
        c = x.shape[axis]
        v = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), c, -1)
        sums = np.einsum("ocj->c", v, dtype=np.float64)
        squares = np.einsum("ocj,ocj->c", v, v).astype(np.float64)
        if self.sums is None:
            if self.count < 0:
                return
            self.sums, self.squares = sums, squares
        elif sums.shape != self.sums.shape:  # a tensor whose channel count varies: no statistics
            self.sums, self.squares, self.count = None, None, -1
            return
        else:
            self.sums += sums
            self.squares += squares
        self.count += x.size // x.shape[axis]

    def mean(self) -> np.ndarray | None:
        """The channel means, or None when nothing usable (finite, fixed channels) was seen."""
        if self.sums is None or self.count <= 0 or not np.isfinite(self.sums).all():
            return None
        return self.sums / self.count

    def mean_square(self) -> np.ndarray | None:
        """The channel means of x^2, or None when nothing usable was seen."""
        if self.squares is None or self.count <= 0 or not np.isfinite(self.squares).all():
            return None
        return self.squares / self.count
