"""Samples made up from a model's declared inputs, for when no data is given (compare without
--data, convert --check-latency without samples): a fixed seed, shapes checked before any is made."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from quantcli.calibration.data import InputSpec
from quantcli.errors import BadDataError

RANDOM_SAMPLE_BYTES = 256 * 2**20  # the most one generated sample may take, its inputs together
_CHUNK = 1 << 20  # values drawn at a time: no float64 copy of a whole input


def random_shapes(
    specs: list[InputSpec], *, model: str | Path = "", hint: str = "pass --data DIR with real samples"
) -> dict[str, tuple[int, ...]]:
    """The shape each input gets in random samples (symbolic dimensions 1), checked before any is
    made: an input without a shape, or a sample over RANDOM_SAMPLE_BYTES (a declared
    [1, 3, 100000, 100000] would be 112 GiB), is a BadDataError that names `model` and says `hint`."""
    where = f"{model}: " if str(model) else ""
    shapes = {}
    for spec in specs:
        if spec.shape is None:
            raise BadDataError(f"{where}input '{spec.name}' has no shape in the model: {hint}")
        shapes[spec.name] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    sizes = {s.name: math.prod(shapes[s.name]) * s.dtype.itemsize for s in specs}
    if sum(sizes.values()) > RANDOM_SAMPLE_BYTES:
        name = max(sizes, key=sizes.__getitem__)
        dtype = next(s.dtype for s in specs if s.name == name)
        total = sum(sizes.values())
        together = "" if sizes[name] > RANDOM_SAMPLE_BYTES else f" ({_gib(total)} with the other inputs)"
        raise BadDataError(
            f"{where}input '{name}' declares shape {list(shapes[name])} ({dtype}, symbolic dimensions as 1): it "
            f"would take {_gib(sizes[name])} per random sample{together}, more than the "
            f"{_gib(RANDOM_SAMPLE_BYTES)} quantcli generates without data; {hint}"
        )
    return shapes


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def random_samples(
    specs: list[InputSpec],
    count: int,
    seed: int,
    *,
    model: str | Path = "",
    hint: str = "pass --data DIR with real samples",
) -> Iterator[dict[str, np.ndarray]]:
    """`count` samples from a fixed seed: float inputs standard normal, integer inputs 0, bool True;
    symbolic dimensions are 1. The same seed gives the same samples. Shapes are checked when this
    is called (random_shapes), before any sample is made."""
    return _random_samples(specs, random_shapes(specs, model=model, hint=hint), count, seed)


def _random_samples(
    specs: list[InputSpec], shapes: dict[str, tuple[int, ...]], count: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        sample = {}
        for spec in specs:
            shape = shapes[spec.name]
            if spec.dtype.kind == "f":
                # drawn in chunks: the same values as one standard_normal(shape) call, without its
                # float64 copy of the whole input
                array = np.empty(shape, spec.dtype)
                flat = array.reshape(-1)
                for start in range(0, flat.size, _CHUNK):
                    flat[start : start + _CHUNK] = rng.standard_normal(min(_CHUNK, flat.size - start))
                sample[spec.name] = array
            elif spec.dtype.kind == "b":
                sample[spec.name] = np.ones(shape, spec.dtype)
            else:
                sample[spec.name] = np.zeros(shape, spec.dtype)
        yield sample
