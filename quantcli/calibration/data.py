"""Sample readers. Three layouts of a directory, chosen by `layout` ("auto" looks at the files):

- per-file (default): one sample per `.npz` file, one array per model input named as the input
  (a single-input model may use `.npy` files);
- batched (`layout="batched"`, or a directory holding only `batch.npz`): every `.npz` file's arrays
  carry a leading sample axis; sample i is row i (kept as a batch axis of 1);
- images (`.png`/`.jpg`/...): decoded and preprocessed as declared (calibration/images.py).
`labels.npy` beside the samples holds the true labels, in sample order (sorted file names, then
rows). Every problem is a BadDataError naming the file (and row).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from quantcli.calibration.images import IMAGE_SUFFIXES, ImagePreprocess
from quantcli.errors import BadDataError

LABELS_FILE = "labels.npy"
BATCH_FILE = "batch.npz"
LAYOUTS = ("auto", "per-file", "batched")

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
            feeds = {specs[0].name: native_byte_order(np.load(path, allow_pickle=False))}
        else:
            with np.load(path, allow_pickle=False) as npz:
                feeds = {k: native_byte_order(npz[k]) for k in npz.files}
    except BadDataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadDataError(f"{path}: cannot read sample: {_load_error(exc)}") from exc
    validate_sample(path, feeds, specs)
    return feeds


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """The array in this machine's byte order: a big-endian float32 ('>f4') sample holds the same
    values as a little-endian one, and onnxruntime takes native arrays only."""
    if isinstance(arr, np.ndarray) and not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def validate_sample(path: Path | str, feeds: dict[str, np.ndarray], specs: list[InputSpec]) -> None:
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
        if arr.size == 0:
            raise BadDataError(
                f"{path}: input '{spec.name}' is empty (shape {list(arr.shape)}): a sample needs values"
            )
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise BadDataError(f"{path}: input '{spec.name}' contains NaN or Inf values")


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + "]"


@dataclass(frozen=True, order=True)
class SampleRef:
    """One sample: a file, and for batched files the row in it."""

    path: Path
    row: int | None = None

    def __str__(self) -> str:
        return f"{self.path}[{self.row}]" if self.row is not None else str(self.path)


def find_samples(
    directory: str | Path, *, layout: str = "auto", preprocess: ImagePreprocess | None = None
) -> list[SampleRef]:
    """Every sample of a directory, in order; raises BadDataError for a missing/empty/mixed one."""
    d = Path(directory)
    if not d.is_dir():
        list_samples(d)  # raises the right error for a missing path or a file
    images = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    arrays = [
        p for p in d.iterdir() if p.is_file() and p.suffix in (".npz", ".npy") and p.name != LABELS_FILE
    ]
    if images and arrays:
        raise BadDataError(f"{d}: mixes images and .npz/.npy samples; use one format")
    if images:
        if preprocess is None:
            raise BadDataError(f"{d}: holds images: declare their preprocessing with --calib-preprocess")
        return [SampleRef(p) for p in images]
    files = list_samples(d)
    batched = layout == "batched" or (layout == "auto" and [p.name for p in files] == [BATCH_FILE])
    if not batched:
        _refuse_empty(d, files)
        return [SampleRef(p) for p in files]
    refs = []
    for path in files:
        if path.suffix != ".npz":
            raise BadDataError(f"{path}: batched samples must be .npz files")
        rows = {k: v.shape[0] if v.ndim else 0 for k, v in _read_npz(path).items()}
        if len(set(rows.values())) != 1 or 0 in rows.values():
            raise BadDataError(
                f"{path}: batched arrays need the same non-empty leading sample axis, got {rows}"
            )
        refs += [SampleRef(path, i) for i in range(next(iter(rows.values())))]
    return refs


def _refuse_empty(directory: Path, files: list[Path]) -> None:
    """Refuse a directory with empty samples (an array with no values, e.g. shape [0, 1, 8, 8]),
    naming how many and the first. Skipping them would silently calibrate on fewer samples than
    given and shift the held-out evaluation split; an empty file is a broken export to fix."""
    empty = [(p, shape) for p in files for shape in [_empty_shape(p)] if shape is not None]
    if not empty:
        return
    first, shape = empty[0]
    if len(empty) == len(files):
        raise BadDataError(
            f"{directory}: all {len(files)} samples are empty ({first.name} holds an array of shape "
            f"{list(shape)}): nothing to calibrate or evaluate on"
        )
    raise BadDataError(
        f"{directory}: {len(empty)} of {len(files)} samples are empty, first {first.name} (an array of "
        f"shape {list(shape)}): remove or re-export them (quantcli does not silently use fewer samples)"
    )


def _empty_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of an array with no values in a .npy/.npz file, read from the headers only; None
    when every array has values or the file cannot be read (read_sample reports that)."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as fh:
                shapes = [_header_shape(fh)]
        else:
            with zipfile.ZipFile(path) as archive:
                shapes = []
                for member in archive.namelist():
                    with archive.open(member) as fh:
                        shapes.append(_header_shape(fh))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return next((s for s in shapes if 0 in s), None)


def _header_shape(fh) -> tuple[int, ...]:  # noqa: ANN001 - a binary file object
    version = np.lib.format.read_magic(fh)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(reader(fh)[0])


def _load_error(exc: Exception) -> str:
    """numpy's message, except where it misleads: a file that is neither .npy nor .npz (text, a
    truncated archive) makes np.load guess a pickle and talk about allow_pickle."""
    if "pickled" in str(exc):
        return "not a NumPy .npy/.npz file (no NumPy header or zip archive)"
    return str(exc)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: native_byte_order(npz[k]) for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadDataError(f"{path}: cannot read sample: {_load_error(exc)}") from exc


def iter_samples(
    items: list[Path] | list[SampleRef], specs: list[InputSpec], preprocess: ImagePreprocess | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Yield one validated sample at a time; a batched file is read once for all its rows."""
    cached: tuple[Path, dict[str, np.ndarray]] | None = None
    for item in items:
        ref = item if isinstance(item, SampleRef) else SampleRef(Path(item))
        if ref.row is not None:
            if cached is None or cached[0] != ref.path:
                cached = (ref.path, _read_npz(ref.path))
            feeds = {k: v[ref.row : ref.row + 1] for k, v in cached[1].items()}
            validate_sample(str(ref), feeds, specs)
            yield feeds
        elif ref.path.suffix.lower() in IMAGE_SUFFIXES:
            if len(specs) != 1 or preprocess is None:
                raise BadDataError(
                    f"{ref.path}: image samples need a single-input model and --calib-preprocess"
                )
            feeds = {specs[0].name: preprocess.load(ref.path)}
            validate_sample(str(ref), feeds, specs)
            yield feeds
        else:
            yield read_sample(ref.path, specs)


def read_labels(directory: Path, refs: list[SampleRef], all_refs: list[SampleRef]) -> np.ndarray | None:
    """Labels of `refs` (by their position among all the directory's samples), or None if absent."""
    path = directory / LABELS_FILE
    if not path.exists():
        return None
    try:
        labels = native_byte_order(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise BadDataError(f"{path}: cannot read labels: {exc}") from exc
    if labels.ndim != 1 or len(labels) != len(all_refs):
        raise BadDataError(
            f"{path}: expected a 1-D array of {len(all_refs)} labels (one per sample), got shape {list(labels.shape)}"
        )
    position = {r: i for i, r in enumerate(all_refs)}
    return labels[[position[r] for r in refs]]


@dataclass(frozen=True)
class SampleSplit:
    """Which samples calibrate and which evaluate, and where the evaluation samples came from."""

    calib: list[SampleRef]
    eval: list[SampleRef]
    eval_dir: Path | None
    eval_source: str
    eval_labels: np.ndarray | None = None


def split_samples(
    calib_dir: Path | None,
    calib_samples: int,
    eval_dir: Path | None,
    eval_samples: int | None,
    *,
    layout: str = "auto",
    preprocess: ImagePreprocess | None = None,
) -> SampleSplit:
    """Choose calibration and evaluation samples, and the evaluation labels.

    Without `eval_dir`, the last 20% of `calib_dir` (at least 1 sample, at most 100) is held out
    for evaluation and never used for calibration; calibration takes the first `calib_samples`
    of the rest, in order.
    """
    calib: list[SampleRef] = []
    evals: list[SampleRef] = []
    all_eval: list[SampleRef] = []
    source = "none"
    if calib_dir is not None:
        refs = find_samples(calib_dir, layout=layout, preprocess=preprocess)
        if eval_dir is None and len(refs) > 1:
            held = min(100, max(1, len(refs) // 5))
            all_eval, evals, refs = refs, refs[-held:], refs[:-held]
            source = f"{len(evals)} samples held out from {calib_dir}"
            eval_dir = calib_dir
        calib = refs[:calib_samples]
    if eval_dir is not None and not evals:
        all_eval = evals = find_samples(eval_dir, layout=layout, preprocess=preprocess)
        source = str(eval_dir)
    if eval_samples is not None:
        evals = evals[:eval_samples]
    labels = read_labels(eval_dir, evals, all_eval) if eval_dir is not None and evals else None
    return SampleSplit(calib, evals, eval_dir, source, labels)
