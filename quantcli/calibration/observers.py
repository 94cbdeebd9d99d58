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


class MinMaxObserver:
    """Running minimum and maximum of every value seen (MinMax calibration)."""

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if math.isnan(lo) or math.isnan(hi):
            self.has_nan = True
        else:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
        self.count += 1

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

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        super().__init__()
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
        super().update(x)  # exact min/max, NaN and inf recorded there
        if not np.isfinite(x).all():  # the histogram holds the finite values
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
        bmin, bmax = float(x.min()), float(x.max())
        self.finite_max = max(self.finite_max, bmax)
        if self.width == 0.0:
            lo = min(bmin, self.lo) if self.counts[0] else bmin
            hi = max(bmax, self.lo) if self.counts[0] else bmax
            if lo == hi:
                # Constant so far: remember the mass at that value until a range appears.
                self.lo = lo
                self.counts[0] += x.size
                return
            self._first_range(lo, hi)
        elif bmin < self.lo or bmax > self.hi:
            self._grow(bmin, bmax)
        hist, _ = np.histogram(x, bins=self.bins, range=(self.lo, self.hi))
        self.counts += hist

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
