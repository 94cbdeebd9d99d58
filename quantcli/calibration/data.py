"""Sample readers: a directory of .npz files (one array per model input) or .npy files.

One sample per file; arrays are named as the model's inputs (a single-input model may use .npy).
`labels.npy` beside the samples holds the true labels, in the sorted order of the file names.
Every problem is a BadDataError naming the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from quantcli.errors import BadDataError

LABELS_FILE = "labels.npy"

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, numpy dtype and shape (None or a string for symbolic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...] | None

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> list[InputSpec]:
        inits = {t.name for t in model.graph.initializer}
        specs = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            tt = vi.type.tensor_type
            dtype = np.dtype(_ONNX_TO_NUMPY.get(tt.elem_type, np.float32))
            shape = None
            if tt.HasField("shape"):
                shape = tuple(
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
                )
            specs.append(cls(vi.name, dtype, shape))
        return specs


def list_samples(directory: str | Path) -> list[Path]:
    """Sorted sample files of a directory; raises BadDataError for a missing/empty/mixed one."""
    d = Path(directory)
    if not d.exists():
        raise BadDataError(f"{d}: no such directory")
    if not d.is_dir():
        raise BadDataError(f"{d}: not a directory (expected a directory of .npz/.npy samples)")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))
    files = [p for p in files if p.name != LABELS_FILE]
    if not files:
        raise BadDataError(f"{d}: no .npz or .npy sample files")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise BadDataError(f"{d}: mixes .npz and .npy samples; use one format")
    return files


def read_sample(path: Path, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Read one sample file and check it against the model's inputs."""
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise BadDataError(
                    f"{path}: .npy samples need a single-input model; this one has "
                    f"{len(specs)} inputs ({', '.join(s.name for s in specs)}): use .npz"
                )
            feeds = {specs[0].name: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as npz:
                feeds = {k: npz[k] for k in npz.files}
    except BadDataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadDataError(f"{path}: cannot read sample: {exc}") from exc
    validate_sample(path, feeds, specs)
    return feeds


def validate_sample(path: Path, feeds: dict[str, np.ndarray], specs: list[InputSpec]) -> None:
    expected = {s.name for s in specs}
    if set(feeds) != expected:
        missing = sorted(expected - set(feeds))
        extra = sorted(set(feeds) - expected)
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}")
        raise BadDataError(
            f"{path}: arrays do not match the model inputs ({'; '.join(detail)}); "
            f"expected {', '.join(sorted(expected))}"
        )
    for spec in specs:
        arr = feeds[spec.name]
        if arr.dtype != spec.dtype:
            raise BadDataError(
                f"{path}: input '{spec.name}' has dtype {arr.dtype}, the model expects {spec.dtype}"
            )
        if spec.shape is not None:
            if arr.ndim != len(spec.shape):
                raise BadDataError(
                    f"{path}: input '{spec.name}' has rank {arr.ndim} (shape {list(arr.shape)}), "
                    f"the model expects rank {len(spec.shape)} {_shape_text(spec.shape)}"
                )
            for got, want in zip(arr.shape, spec.shape, strict=True):
                if isinstance(want, int) and want > 0 and got != want:
                    raise BadDataError(
                        f"{path}: input '{spec.name}' has shape {list(arr.shape)}, "
                        f"the model expects {_shape_text(spec.shape)}"
                    )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise BadDataError(f"{path}: input '{spec.name}' contains NaN or Inf values")


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + "]"


def iter_samples(files: list[Path], specs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
    """Yield one validated sample at a time; nothing is kept in memory between samples."""
    for path in files:
        yield read_sample(path, specs)


def read_labels(directory: Path, files: list[Path]) -> np.ndarray | None:
    """Labels for `files` (by their position in the sorted directory), or None if absent."""
    path = directory / LABELS_FILE
    if not path.exists():
        return None
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadDataError(f"{path}: cannot read labels: {exc}") from exc
    all_files = list_samples(directory)
    if labels.ndim != 1 or len(labels) != len(all_files):
        raise BadDataError(
            f"{path}: expected a 1-D array of {len(all_files)} labels (one per sample file), "
            f"got shape {list(labels.shape)}"
        )
    position = {p: i for i, p in enumerate(all_files)}
    return labels[[position[p] for p in files]]


@dataclass(frozen=True)
class SampleSplit:
    """Which files calibrate and which evaluate, and where the evaluation files came from."""

    calib: list[Path]
    eval: list[Path]
    eval_dir: Path | None
    eval_source: str


def split_samples(
    calib_dir: Path | None,
    calib_samples: int,
    eval_dir: Path | None,
    eval_samples: int | None,
) -> SampleSplit:
    """Choose calibration and evaluation files.

    Without `eval_dir`, the last 20% of `calib_dir` (at least 1 file, at most 100) is held out
    for evaluation and never used for calibration; calibration takes the first `calib_samples`
    of the rest, in sorted order.
    """
    calib: list[Path] = []
    evals: list[Path] = []
    source = "none"
    if calib_dir is not None:
        files = list_samples(calib_dir)
        if eval_dir is None and len(files) > 1:
            held = min(100, max(1, len(files) // 5))
            evals = files[-held:]
            files = files[:-held]
            source = f"{len(evals)} samples held out from {calib_dir}"
            eval_dir = calib_dir
        calib = files[:calib_samples]
    if eval_dir is not None and not evals:
        evals = list_samples(eval_dir)
        source = str(eval_dir)
    if eval_samples is not None:
        evals = evals[:eval_samples]
    return SampleSplit(calib, evals, eval_dir, source)
