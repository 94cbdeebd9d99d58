"""Sample readers. Three layouts of a directory, chosen by `layout` ("auto" looks at the files):

- per-file (default): one sample per `.npz` file, one array per model input named as the input
  (a single-input model may use `.npy` files);
- batched (`layout="batched"`, or a directory holding only `batch.npz`): every `.npz` file's arrays
  carry a leading sample axis; sample i is row i (kept as a batch axis of 1);
- images (`.png`/`.jpg`/...): decoded and preprocessed as declared (calibration/images.py).
The Python API also takes samples in memory (`memory_samples`): an iterable of feed dicts
({input name: array}), a callable returning one, or an onnxruntime-style reader with `get_next()`.
`labels.npy` beside the samples holds the true labels, in sample order (sorted file names, then
rows). Every problem is a BadDataError naming the file (and row).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from quantcli.calibration.images import IMAGE_SUFFIXES, ImagePreprocess
from quantcli.calibration.npy import BatchRows, array_headers, nbytes
from quantcli.errors import BadDataError
from quantcli.text import count

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
    except MemoryError as exc:
        raise BadDataError(_too_large(path)) from exc
    validate_sample(path, feeds, specs)
    return feeds


def _too_large(path: Path) -> str:
    """Why a sample could not be read into memory: its arrays' sizes, from their headers."""
    arrays = array_headers(path, "array") or {}
    detail = ", ".join(f"{k} {dtype} {list(shape)}" for k, (shape, dtype) in arrays.items())
    return (
        f"{path}: cannot read sample: its arrays take {nbytes(arrays) / 2**30:,.2f} GiB ({detail}), "
        "more memory than could be allocated"
    )


def native_byte_order(arr: np.ndarray) -> np.ndarray:
    """The array in this machine's byte order: a big-endian float32 ('>f4') sample holds the same
    values as a little-endian one, and onnxruntime takes native arrays only."""
    if isinstance(arr, np.ndarray) and not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def sample_rows(feeds: dict[str, np.ndarray]) -> int:
    """Samples in one feed of a model with a free batch axis: its first input's leading dimension
    (a file may hold a batch)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim else 1


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
        if arr.dtype == np.float32 and spec.dtype in (np.float16, np.float64):
            arr = feeds[spec.name] = _from_float32(path, spec, arr)
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


def _from_float32(path: Path | str, spec: InputSpec, arr: np.ndarray) -> np.ndarray:
    """A float32 sample for a float16/float64 input, in the input's type: exact for float64;
    rounded to the nearest float16 (11 significant bits) for float16, refused beyond its range."""
    if spec.dtype == np.float16:
        finite = arr[np.isfinite(arr)]
        if finite.size and float(np.max(np.abs(finite))) > float(np.finfo(np.float16).max):
            raise BadDataError(
                f"{path}: input '{spec.name}' is float32 with values beyond float16's range (|x| > 65504); "
                "the model expects float16"
            )
    return arr.astype(spec.dtype)


def _shape_text(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, 0) else "?" for d in shape) + "]"


@dataclass(frozen=True, order=True)
class SampleRef:
    """One sample: a file, and for batched files the row in it."""

    path: Path
    row: int | None = None

    def __str__(self) -> str:
        return f"{self.path}[{self.row}]" if self.row is not None else str(self.path)


@dataclass(frozen=True)
class MemorySample:
    """One sample given in memory through the Python API: its feeds, and where it came from."""

    feeds: dict[str, np.ndarray]
    source: str
    index: int

    def __str__(self) -> str:
        return f"{self.source} sample {self.index}"


# What the Python API accepts as samples besides a directory.
SampleData = Iterable[dict[str, np.ndarray]] | Callable[[], Iterable[dict[str, np.ndarray]]]


def memory_samples(data: object, source: str) -> list[MemorySample]:
    """Samples given in memory: an iterable of {input name: array} dicts, a callable returning one
    (called once), or an object with `get_next()` returning a dict until None (onnxruntime's
    CalibrationDataReader). Read once, so a generator is fine; each is validated when it is used."""
    if callable(data) and not hasattr(data, "get_next"):
        data = data()
    if hasattr(data, "get_next"):
        reader = data
        data = iter(reader.get_next, None)
    if isinstance(data, (dict, str, bytes)) or not isinstance(data, Iterable):
        raise BadDataError(
            f"{source}: expected a directory, an iterable of {{input name: array}} dicts, a callable "
            f"returning one or a reader with get_next(); got {type(data).__name__}"
        )
    samples = []
    for i, feeds in enumerate(data):
        if not isinstance(feeds, dict) or not all(isinstance(k, str) for k in feeds):
            raise BadDataError(
                f"{source} sample {i}: expected a dict of input name -> array, got {type(feeds).__name__}"
            )
        try:
            arrays = {k: np.asarray(v) for k, v in feeds.items()}
        except (TypeError, ValueError) as exc:
            raise BadDataError(f"{source} sample {i}: not arrays: {exc}") from exc
        samples.append(MemorySample(arrays, source, i))
    if not samples:
        raise BadDataError(f"{source}: no samples")
    return samples


def find_samples(
    directory: str | Path,
    *,
    layout: str = "auto",
    preprocess: ImagePreprocess | None = None,
    option: str = "--calib-preprocess",
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
            raise BadDataError(f"{d}: holds images: declare their preprocessing with {option}")
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
        headers = array_headers(path)  # not the data: a batched file may be large
        if headers is None:
            headers = {k: (v.shape, v.dtype) for k, v in _read_npz(path).items()}  # says what is wrong
        rows = {k: shape[0] if shape else 0 for k, (shape, _) in headers.items()}
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
    except MemoryError as exc:
        raise BadDataError(_too_large(path)) from exc


def iter_samples(
    items: list[Path] | list[SampleRef] | list[MemorySample],
    specs: list[InputSpec],
    preprocess: ImagePreprocess | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield one validated sample at a time; a batched file's rows are read one at a time, in
    order (the whole file, once, where its layout does not allow that)."""
    rows: BatchRows | None = None
    whole: tuple[Path, dict[str, np.ndarray]] | None = None
    if preprocess is not None and len(specs) == 1:
        preprocess = preprocess.fitted(specs[0].shape)
    try:
        for item in items:
            if isinstance(item, MemorySample):
                validate_sample(str(item), item.feeds, specs)
                yield item.feeds
                continue
            ref = item if isinstance(item, SampleRef) else SampleRef(Path(item))
            if ref.row is not None:
                if rows is not None and rows.path != ref.path:
                    rows.close()
                    rows = None
                if rows is None and (whole is None or whole[0] != ref.path):
                    rows = BatchRows.open(ref.path)
                feeds = rows.row(ref.row) if rows is not None else None
                if feeds is None:
                    if rows is not None:
                        rows.close()
                        rows = None
                    if whole is None or whole[0] != ref.path:
                        whole = (ref.path, _read_npz(ref.path))
                    feeds = {k: v[ref.row : ref.row + 1] for k, v in whole[1].items()}
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
    finally:
        if rows is not None:
            rows.close()


@dataclass(frozen=True)
class SampleShapes:
    """The samples' arrays as their .npy headers declare them, measured before any is read."""

    label: str  # the sample (file, and row) whose arrays take the most bytes
    nbytes: int  # that sample's bytes, its arrays together
    shapes: dict[str, tuple[int, ...]]  # per array, each axis's largest size over every sample
    detail: str = ""  # that sample's arrays: "x float32 [1, 3, 224, 224]"


def measure_samples(items: list[Path] | list[SampleRef], specs: list[InputSpec]) -> SampleShapes | None:
    """What reading each sample will take, from the headers alone (a 2 MB .npz can inflate to
    gigabytes); None for images, whose size their declared preprocessing fixes."""
    largest: tuple[int, SampleRef, dict[str, tuple[tuple[int, ...], np.dtype]]] | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    headers: dict[Path, dict[str, tuple[tuple[int, ...], np.dtype]] | None] = {}
    for item in items:
        if isinstance(item, MemorySample):  # already in memory: its arrays say their size
            ref, arrays = item, {k: (v.shape, v.dtype) for k, v in item.feeds.items()}
        else:
            ref = item if isinstance(item, SampleRef) else SampleRef(Path(item))
            if ref.path.suffix.lower() in IMAGE_SUFFIXES:
                return None
            if ref.path not in headers:  # a batched file's rows share it
                headers = {ref.path: array_headers(ref.path, specs[0].name if len(specs) == 1 else "")}
            arrays = headers[ref.path]
            if arrays is None:  # unreadable: reading it reports the problem, as for any sample
                continue
            if ref.row is not None:
                arrays = {
                    k: ((1, *shape[1:]) if shape else shape, dtype) for k, (shape, dtype) in arrays.items()
                }
        size = nbytes(arrays)
        if largest is None or size > largest[0]:
            largest = (size, ref, arrays)
        for k, (shape, _) in arrays.items():
            seen = shapes.get(k)
            if seen is None or len(seen) != len(shape):
                shapes[k] = shape if seen is None or math.prod(shape) > math.prod(seen) else seen
            else:
                shapes[k] = tuple(max(a, b) for a, b in zip(seen, shape, strict=True))
    if largest is None:
        return None
    size, ref, arrays = largest
    detail = ", ".join(f"{k} {dtype} {list(shape)}" for k, (shape, dtype) in arrays.items())
    return SampleShapes(str(ref), size, shapes, detail)


def read_labels(directory: Path, refs: list[SampleRef], all_refs: list[SampleRef]) -> np.ndarray | None:
    """Labels of `refs` (by their position among all the directory's samples), or None if absent."""
    path = directory / LABELS_FILE
    if not path.exists():
        return None
    if not path.is_file():  # a FIFO or device would block or never end a read
        raise BadDataError(f"{path}: not a regular file; labels are read only from a regular file")
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
    calib_dir: Path | SampleData | None,
    calib_samples: int,
    eval_dir: Path | SampleData | None,
    eval_samples: int | None,
    *,
    layout: str = "auto",
    preprocess: ImagePreprocess | None = None,
) -> SampleSplit:
    """Choose calibration and evaluation samples, and the evaluation labels.

    Without `eval_dir`, the last 20% of `calib_dir` (at least 1 sample, at most 100) is held out
    for evaluation and never used for calibration; calibration takes the first `calib_samples`
    of the rest, in order. Either may be samples in memory (`memory_samples`; no labels).
    """
    if calib_dir is not None and not isinstance(calib_dir, Path):
        calib_dir = _InMemory(memory_samples(calib_dir, "calibration data"))
    if eval_dir is not None and not isinstance(eval_dir, Path):
        eval_dir = _InMemory(memory_samples(eval_dir, "evaluation data"))
    calib: list[SampleRef] = []
    evals: list[SampleRef] = []
    all_eval: list[SampleRef] = []
    source = "none"
    if calib_dir is not None:
        refs = _refs(calib_dir, layout, preprocess)
        if eval_dir is None and len(refs) > 1:
            held = min(100, max(1, len(refs) // 5))
            all_eval, evals, refs = refs, refs[-held:], refs[:-held]
            source = f"{count(len(evals), 'sample')} held out from {calib_dir}"
            eval_dir = calib_dir
        calib = refs[:calib_samples]
    if eval_dir is not None and not evals:
        all_eval = evals = _refs(eval_dir, layout, preprocess)
        source = str(eval_dir)
    if eval_samples is not None:
        evals = evals[:eval_samples]
    labels = None
    if isinstance(eval_dir, Path) and evals:
        labels = read_labels(eval_dir, evals, all_eval)
    return SampleSplit(calib, evals, eval_dir if isinstance(eval_dir, Path) else None, source, labels)


@dataclass(frozen=True)
class _InMemory:
    """Samples given in memory, in split_samples' place of a directory."""

    samples: list[MemorySample]

    def __str__(self) -> str:
        return self.samples[0].source


def _refs(
    where: Path | _InMemory, layout: str, preprocess: ImagePreprocess | None
) -> list[SampleRef] | list[MemorySample]:
    if isinstance(where, _InMemory):
        return where.samples
    return find_samples(where, layout=layout, preprocess=preprocess)
