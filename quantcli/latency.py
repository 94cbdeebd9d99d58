"""Latency of two models measured side by side: interleaved runs in one process, medians (convert
--check-latency and --max-latency-ratio, compare --latency)."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcli.errors import QuantcliError, UnsupportedModelError
from quantcli.io_match import IOMatch

MIN_ROUNDS = 30
WARMUP_RUNS = 5
BUDGET_MIN_ROUNDS = 10  # a time budget never cuts a measurement below this


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
    io: IOMatch | None,
    *,
    threads: int = 1,
    rounds: int = MIN_ROUNDS,
    warmup: int = WARMUP_RUNS,
    budget_s: float | None = None,
    sessions: tuple | None = None,
    give_up_s: float | None = None,
) -> Latency:
    """Median time of one run of each model on onnxruntime's CPU provider, in the same conditions:
    sessions with the same options, `warmup` runs each, then `rounds` rounds that run both models
    one after the other, alternating which goes first. `budget_s`: fewer rounds (down to
    BUDGET_MIN_ROUNDS) where `rounds` would take longer, judged from the warm-up runs. `sessions`:
    the two timing sessions, already made (timing_session); `io` None: both read `sample` as is.
    `give_up_s`: a TooSlowToTime error when the first run of both models takes longer."""
    if sessions is None:
        sessions = (timing_session(reference, threads), timing_session(candidate, threads))
    feeds = [sample, sample] if io is None else [io.feeds(sample, "reference"), io.feeds(sample, "candidate")]
    warm_ns = 0
    for k in range(warmup):
        for s, f in zip(sessions, feeds, strict=True):
            start = time.perf_counter_ns()
            s.run(None, f)
            warm_ns += time.perf_counter_ns() - start
        if k == 0 and give_up_s is not None and warm_ns / 1e9 > give_up_s:
            raise TooSlowToTime(
                f"one run of both models takes {warm_ns / 1e9:.2f} s, more than the default check's "
                f"budget allows for {BUDGET_MIN_ROUNDS} rounds: --check-latency times it"
            )
    if budget_s is not None and warmup:
        per_round_s = warm_ns / warmup / 1e9
        rounds = max(min(rounds, BUDGET_MIN_ROUNDS), min(rounds, int(budget_s / max(per_round_s, 1e-9))))
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


def op_times(
    model: Path | bytes, sample: dict[str, np.ndarray], *, threads: int = 1, runs: int = 10
) -> list[OpTime]:
    """Where one model's time goes: onnxruntime's profiler over `runs` runs (the first, which
    allocates, included), kernel time per op type of the graph it optimized, most first."""
    import json
    import os

    import onnxruntime as ort

    opts = _options(ort, threads)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="quantcli-") as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, sample)
        profile = session.end_profiling()
        events = json.loads(Path(profile).read_text())
        os.remove(profile)
    total: dict[str, float] = {}
    nodes: dict[str, set[str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        total[op] = total.get(op, 0.0) + e["dur"] / 1e3 / runs
        nodes.setdefault(op, set()).add(e["name"])
    return sorted((OpTime(op, len(nodes[op]), ms) for op, ms in total.items()), key=lambda t: -t.ms)


class TooSlowToTime(QuantcliError):
    """The default latency check would take more than its budget."""


@dataclass(frozen=True)
class OpTime:
    """One op type's kernel time per run (onnxruntime's profiler), and how many nodes ran it."""

    op_type: str
    nodes: int
    ms: float


def _options(ort, threads: int):  # noqa: ANN001, ANN202 - the onnxruntime module, SessionOptions
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def timing_session(model: Path | bytes, threads: int):  # noqa: ANN201 - onnxruntime session
    """A session as a deployment would make it (all graph optimizations, pre-packed weights),
    with a fixed number of intra-op threads and sequential execution; over a path or the bytes
    of a serialised model."""
    import onnxruntime as ort

    path = "the float32 reference" if isinstance(model, bytes) else model
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, _options(ort, threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{path}: onnxruntime cannot load the model: {first}") from exc
