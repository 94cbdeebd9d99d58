"""Observers fed through the thread pool end where one thread leaves them; binning counts exactly."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import DATA, SAMPLES

from quantcli.calibration.collect import float_tensors, weighted_inputs
from quantcli.calibration.data import InputSpec, iter_samples, list_samples
from quantcli.calibration.fold import PARALLEL_VALUES, observe, observer_pool
from quantcli.calibration.observers import ChannelMeanObserver, HistogramObserver
from quantcli.preprocess import preprocess
from quantcli.runtime import exposing_session


def cnn_runs(batches: int = 3):
    """digits_cnn with every float tensor exposed, run on `batches` batches of its calibration
    samples whose spread grows (so a histogram's range grows between batches): (names, runs)."""
    model = preprocess(onnx.load(SAMPLES / "digits_cnn.onnx")).model
    names = float_tensors(model)
    session = exposing_session(model, names)
    out_names = [o.name for o in session.get_outputs()]
    specs = InputSpec.from_model(model)
    files = list_samples(DATA / "digits_cnn" / "calib")
    x = np.concatenate([s["input"] for s in iter_samples(files, specs)])
    runs = [session.run(out_names, {"input": x * (1.0 + k)}) for k in range(batches)]
    return model, out_names, runs


def observers_for(model: onnx.ModelProto, out_names: list[str]):
    observers = {n: HistogramObserver(2048) for n in out_names}
    means = {n: ChannelMeanObserver(axis) for n, axis in weighted_inputs(model).items() if n in observers}
    return observers, means


def test_threaded_observers_match_one_thread() -> None:
    model, out_names, runs = cnn_runs()
    assert sum(v.size for v in runs[0]) > PARALLEL_VALUES  # the pool takes the work
    one, one_means = observers_for(model, out_names)
    many, many_means = observers_for(model, out_names)
    with observer_pool(4) as pool:
        assert pool is not None
        observe(pool, out_names, runs[:2], many, many_means)  # two runs in one call: in run order
        observe(pool, out_names, runs[2:], many, many_means)
    for values in runs:
        observe(None, out_names, [values], one, one_means)
    grown = 0
    for name in out_names:
        a, b = one[name], many[name]
        assert (a.min, a.max, a.lo, a.width, a.count) == (b.min, b.max, b.lo, b.width, b.count), name
        np.testing.assert_array_equal(a.counts, b.counts)
        grown += a.count == 3 and a.lo < float(runs[0][out_names.index(name)].min())
    assert grown  # the histograms grew between batches: update order mattered
    assert one_means and one_means.keys() == many_means.keys()
    for name, mean in one_means.items():
        np.testing.assert_array_equal(mean.sums, many_means[name].sums)
        np.testing.assert_array_equal(mean.squares, many_means[name].squares)


def test_observe_skips_tensors_without_observer_and_non_float32() -> None:
    observers = {"a": HistogramObserver(16), "b": HistogramObserver(16)}
    observe(
        None,
        ["a", "b", "c"],
        [[np.arange(4, dtype=np.float64), np.ones(3, np.float32), np.ones(2)]],
        observers,
        {},
    )
    assert observers["a"].count == 0 and observers["b"].count == 1
