"""Latency of two models measured side by side: interleaved runs in one process, medians (convert
--check-latency and --max-latency-ratio, compare --latency)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcli.errors import UnsupportedModelError
from quantcli.io_match import IOMatch

MIN_ROUNDS = 30
WARMUP_RUNS = 5


@dataclass(frozen=True)
class Latency:
    """Per-run wall times of both models, measured interleaved in one process (median, fastest)."""

    threads: int
    rounds: int
    warmup: int
    reference_ms: float
    candidate_ms: float
    reference_min_ms: float
    candidate_min_ms: float

    @property
    def ratio(self) -> float:
        """Median candidate time / median reference time (below 1: the candidate is faster)."""
        return self.candidate_ms / self.reference_ms if self.reference_ms else float("inf")


def measure_latency(
    reference: Path,
    candidate: Path,
    sample: dict[str, np.ndarray],
    io: IOMatch,
    *,
    threads: int = 1,
    rounds: int = MIN_ROUNDS,
    warmup: int = WARMUP_RUNS,
) -> Latency:
    """Median time of one run of each model on onnxruntime's CPU provider, in the same conditions:
    sessions with the same options, `warmup` runs each, then `rounds` rounds that run both models
    one after the other, alternating which goes first."""
    sessions = [_timing_session(reference, threads), _timing_session(candidate, threads)]
    feeds = [io.feeds(sample, "reference"), io.feeds(sample, "candidate")]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[int]] = [[], []]
    for k in range(rounds):
        for which in (0, 1) if k % 2 == 0 else (1, 0):
            start = time.perf_counter_ns()
            sessions[which].run(None, feeds[which])
            times[which].append(time.perf_counter_ns() - start)
    ms = [[x / 1e6 for x in t] for t in times]
    return Latency(
        threads=threads,
        rounds=rounds,
        warmup=warmup,
        reference_ms=statistics.median(ms[0]),
        candidate_ms=statistics.median(ms[1]),
        reference_min_ms=min(ms[0]),
        candidate_min_ms=min(ms[1]),
    )


def _timing_session(path: Path, threads: int):  # noqa: ANN202 - onnxruntime session
    """A session as a deployment would make it (all graph optimizations, pre-packed weights),
    with a fixed number of intra-op threads and sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{path}: onnxruntime cannot load the model: {first}") from exc
