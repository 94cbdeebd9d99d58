"""Fold a calibration run's outputs into the observers, the tensors spread over a pool of threads.

numpy releases the GIL in most of the loops that cost (min/max, the histogram's float64 binning
arithmetic, the channel sums), so the observers of different tensors update largely in parallel;
np.bincount, the histogram's counting and about half its cost, holds the GIL (measured: no gain
from a second thread), which bounds the gain for the histogram methods. Each observer still sees
its tensor's batches one at a time and in the order of the runs, and a batch is finished before the
next run starts: the statistics, and so the ranges, are the ones a single thread computes, and no
more outputs are held than before.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from quantcli.calibration.observers import ChannelMeanObserver, MinMaxObserver

MAX_THREADS = 8
# Below this many values in a run's outputs, handing them to threads costs more than it saves.
PARALLEL_VALUES = 1 << 16


def observer_threads() -> int:
    """Threads for the observers: the CPUs this process may run on, at most MAX_THREADS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


@contextlib.contextmanager
def observer_pool(threads: int | None = None) -> Iterator[ThreadPoolExecutor | None]:
    """A pool for `observe` (None on a single CPU); on the way out, queued work is dropped and the
    running updates finish, so an interruption leaves no thread behind."""
    threads = observer_threads() if threads is None else threads
    if threads <= 1:
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quantcli-observe")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def observe(
    pool: ThreadPoolExecutor | None,
    out_names: Sequence[str],
    results: Sequence[Sequence[object]],
    observers: dict[str, MinMaxObserver],
    means: dict[str, ChannelMeanObserver],
) -> None:
    """Fold `results` (the outputs of one or more runs, in run order, named by `out_names`) into the
    observers of the float32 outputs that have one, and into their channel-mean observers."""
    work = []
    for i, name in enumerate(out_names):
        observer = observers.get(name)
        if observer is None:
            continue
        values = [v[i] for v in results if isinstance(v[i], np.ndarray) and v[i].dtype == np.float32]
        if values:
            work.append((sum(v.size for v in values), observer, means.get(name), values))
    if pool is None or sum(item[0] for item in work) < PARALLEL_VALUES:
        for _, observer, mean, values in work:
            _fold(observer, mean, values)
        return
    work.sort(key=lambda item: -item[0])  # the largest first: the threads finish closer together
    futures = [pool.submit(_fold, observer, mean, values) for _, observer, mean, values in work]
    for future in futures:
        future.result()


def _fold(observer: MinMaxObserver, mean: ChannelMeanObserver | None, values: list[np.ndarray]) -> None:
    for value in values:
        observer.update(value)
        if mean is not None:
            mean.update(value)
