"""Accuracy and latency of converted models in onnxruntime (CPU provider, one intra-op thread)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _bench_cases import Feed

WARMUP_RUNS = 10


def make_session(path: Path) -> ort.InferenceSession:
    """An inference session as a user gets it (all graph optimizations), on one intra-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Accuracy:
    labels: float | None  # accuracy vs labels.npy
    top1_agree: float | None  # top-1 agreement with FP32 (classifier outputs)
    cosine: float  # mean cosine similarity of the scored output vs FP32


def run_outputs(session: ort.InferenceSession, feeds: list[Feed], output: str | None) -> np.ndarray:
    """The scored output (`output`, or the first) of every sample, one sample per run, as [samples, -1]."""
    name = output or session.get_outputs()[0].name
    inputs = {i.name for i in session.get_inputs()}
    rows = [session.run([name], {k: v for k, v in f.items() if k in inputs})[0] for f in feeds]
    return np.stack([np.asarray(r, dtype=np.float64).reshape(-1) for r in rows])


def cosines(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each sample's cosine similarity of its outputs ([samples, -1]) to the reference's."""
    norms = np.linalg.norm(values, axis=1) * np.linalg.norm(reference, axis=1)
    return np.sum(values * reference, axis=1) / np.maximum(norms, 1e-30)


def score(values: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, classifier: bool) -> Accuracy:
    top1 = values.argmax(axis=1)
    return Accuracy(
        labels=None if labels is None else float(np.mean(top1 == labels)),
        top1_agree=float(np.mean(top1 == reference.argmax(axis=1))) if classifier else None,
        cosine=float(np.mean(cosines(values, reference))),
    )


def median_latencies(
    sessions: dict[str, ort.InferenceSession], feed: Feed, rounds: int, seed: int = 0
) -> dict[str, float]:
    """Median seconds per run; each round runs every model once, in a fresh random order (seeded).

    Not a rotation of a fixed list: that gives every model the same predecessor in every round, and
    the predecessor moves a small model's time by a few percent (the caches and branch predictors a
    model running the same kernels leaves warm, or one running others leaves cold). Measured here on
    digits_cnn at batch 1 with compare_ort.py's order rotated (quantcli static always right after
    FP32, onnxruntime static right after quantcli static, the same integer kernels): quantcli /
    onnxruntime 1.015, against 0.967 in random order; a byte-identical copy of a model timed right
    after it ran 2.6% faster than the original.
    """
    tools = list(sessions)
    feeds = {t: {i.name: feed[i.name] for i in sessions[t].get_inputs()} for t in tools}
    for _ in range(WARMUP_RUNS):
        for tool in tools:
            sessions[tool].run(None, feeds[tool])
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    order = random.Random(seed)
    for _ in range(rounds):
        for tool in order.sample(tools, len(tools)):
            start = time.perf_counter()
            sessions[tool].run(None, feeds[tool])
            times[tool].append(time.perf_counter() - start)
    return {tool: statistics.median(t) for tool, t in times.items()}
