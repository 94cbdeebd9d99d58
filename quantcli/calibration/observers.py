"""Observers fold activation batches into running statistics; params.py turns them into qparams."""

from __future__ import annotations

import numpy as np


class MinMaxObserver:
    """Running minimum and maximum of every value seen (MinMax calibration)."""

    def __init__(self) -> None:
        self.min = np.inf
        self.max = -np.inf
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        self.min = min(self.min, float(np.min(x)))
        self.max = max(self.max, float(np.max(x)))
        self.count += 1

    def range(self) -> tuple[float, float]:
        """The observed [min, max]; (0, 0) when nothing was seen."""
        if self.count == 0:
            return 0.0, 0.0
        return self.min, self.max
