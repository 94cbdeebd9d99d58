"""Reading and writing ONNX models: one clear error for a bad file, atomic writes, sizes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import numpy_helper

from quantcli.errors import BadModelError, InternalError, UsageError
from quantcli.outputs import (
    TEMP_PREFIX,
    check_output_path,
    check_outputs,
    fit_name,
    input_kind,
    name_max,
    same_file,
    signals_deferred,
    write_bytes_atomic,
    write_target,
    write_temp,
)

__all__ = ["check_output_path", "check_outputs", "same_file", "write_bytes_atomic"]  # re-exported: outputs.py

# Protobuf refuses to serialise a message of 2 GiB or more; above this, weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """The first checks of a model path, before anything reads it; raises BadModelError."""
    p = Path(path)
    if not p.exists():
        raise BadModelError(f"{p}: no such file")
    if p.is_dir():
        raise BadModelError(f"{p}: is a directory, expected an .onnx file")
    kind = input_kind(p)
    if kind is not None:  # reading it could block (a FIFO) or never end (/dev/zero)
        raise BadModelError(f"{p}: is {kind}, not a regular file; models are read only from regular files")
    if p.stat().st_size == 0:
        raise BadModelError(f"{p}: file is empty")
    return p


def load_model(path: str | os.PathLike[str], *, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model or raise BadModelError naming the file.

    `external_data=False` reads only the protobuf: tensors stored in external files keep their
    location references and their values are not read (inspect reads what it needs, when it needs it).
    """
    p = check_model_path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except DecodeError as exc:
        raise BadModelError(f"{p}: not an ONNX model (protobuf decode failed: {exc})") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadModelError(f"{p}: cannot read model: {exc}") from exc
    if external_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            _check_external_locations(model, p.parent)
            load_external_data_for_model(model, str(p.parent))
        except FileNotFoundError as exc:
            raise BadModelError(f"{p}: external data file missing: {exc.filename or exc}") from exc
        except (onnx.checker.ValidationError, ValueError) as exc:  # onnx checks locations too
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadModelError(f"{p}: cannot read its external data: {first}") from exc
        except (OSError, RuntimeError) as exc:
            raise BadModelError(f"{p}: cannot read model: {exc}") from exc
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise BadModelError(f"{p}: not an ONNX model (no graph, or a graph with no nodes and no outputs)")
    if not model.opset_import:
        raise BadModelError(f"{p}: not an ONNX model (no opset_import)")
    return model


def model_size(model: onnx.ModelProto) -> int:
    """The serialised size in bytes, at most a few bytes a tensor over it, found without
    serialising the weights: upb's ByteSize() serialises the whole message to measure it, a
    transient copy of every weight (+512 MB on a 512 MiB model, at every size check). The main
    graph's raw tensors count by their shapes; the rest is measured. Above the protobuf limit
    (where ByteSize() raises) a value just over the limit."""
    weights = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL:
            try:
                nbytes = _nbytes(t)
            except (KeyError, ValueError, TypeError):
                return _measured_size(model)
            # the bytes, their tag and length, and a generous bound on the other fields
            weights += nbytes + 16 + len(t.name.encode()) + 11 * len(t.dims) + len(t.doc_string.encode())
        else:
            weights += _measured_size(t) + 6
    return min(weights + _measured_size(_without_initializers(model)), PROTOBUF_LIMIT + 1)


def _measured_size(message) -> int:  # noqa: ANN001 - a protobuf message
    try:
        return message.ByteSize()
    except EncodeError:
        return PROTOBUF_LIMIT + 1


def serialize_model(model: onnx.ModelProto) -> bytes:
    """Serialise deterministically; a model over the protobuf limit needs `write_model` instead."""
    if model_size(model) > PROTOBUF_LIMIT:
        raise UsageError("model exceeds 2 GB: it can only be written with its weights as external data")
    return model.SerializeToString(deterministic=True)


def write_output_bytes(data: bytes, path: str | os.PathLike[str]) -> int:
    """Write an output atomically (a serialised model, a cost table); returns the number of bytes
    written. A failure is a UsageError naming the file."""
    try:
        write_bytes_atomic(Path(path), data)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write output: {exc.strerror or exc}") from exc
    return len(data)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Save atomically (external data beside it above 2 GB); returns the bytes written."""
    with staged_model(model, Path(path)) as staged:
        return staged.size


# Above this size a model takes the paths that avoid a transient copy of its weights: written a
# tensor at a time (write_serialized), checked from its file before it is loaded
# (load_valid_model), onnxruntime sessions built from a file (runtime.make_session), freed memory
# released between convert's stages (api.convert).
LARGE_MODEL_BYTES = 64 << 20
EXTERNAL_THRESHOLD = 1024  # initializers at least this big go to the external data file
_ALIGN = 4096  # external tensors start on page boundaries so onnxruntime can map them


@dataclass
class StagedModel:
    """A model written under temporary names in its destination directory, not yet in place."""

    path: Path  # the staged model file: readable by onnx.checker and onnxruntime
    size: int  # bytes of the model file plus its external data
    final: Path
    data_name: str | None  # external data file name (relative to the model), if any
    # other outputs of the same command (temporary file, destination), put in place with the model
    companions: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    discard: bool = False  # set before the block ends: only the companions are put in place

    def add(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Write `data` under a temporary name beside `path` now; it is renamed into place together
        with the model, or removed with it."""
        path = write_target(path)
        try:
            tmp = write_temp(path.parent if str(path.parent) else Path("."), data)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write output: {exc.strerror or exc}") from exc
        self.companions.append((tmp, path))


def staged_model(
    model: onnx.ModelProto, final: Path, *, external: bool | None = None, keep: tuple[Path, ...] = ()
) -> contextlib.AbstractContextManager[StagedModel]:
    """`_staged_model` as a context manager that does not keep `model` alive: contextlib's keeps its
    arguments for the life of the block, which held a converted model (hundreds of MB on a big one)
    through verification after the caller had let it go."""
    manager = _staged_model(model, final, external=external, keep=keep)
    manager.args, manager.kwds = (), {}  # only used to re-create it as a decorator, which this is not
    return manager


@contextlib.contextmanager
def _staged_model(
    model: onnx.ModelProto, final: Path, *, external: bool | None = None, keep: tuple[Path, ...] = ()
) -> Iterator[StagedModel]:
    """Write `model` into a temporary directory beside `final`; rename into place when the block
    exits normally, remove everything when it raises (or is interrupted).

    Models over the protobuf limit (or with `external=True`) keep their large initializers in
    `<name>.<hash>.data` next to the model; the hash makes the name change with the content, so a
    crash between the two renames leaves the previous model and its data file consistent. Data
    files of earlier writes of the same output (that name pattern) are removed afterwards, except
    the files in `keep` (an input's own data). The model object is not modified; the destination is
    never read. Temporary names are short, so they fit wherever the final name fits.
    """
    final = write_target(final)
    directory = final.parent if str(final.parent) else Path(".")
    use_external = model_size(model) > PROTOBUF_LIMIT if external is None else external
    try:
        stage = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=directory))
    except OSError as exc:
        raise UsageError(f"{final}: cannot write output: {exc.strerror or exc}") from exc
    staged = None
    try:
        try:
            staged = _write_staged(model, final, stage, use_external)
        except OSError as exc:
            raise UsageError(f"{final}: cannot write output: {exc.strerror or exc}") from exc
        del model  # the caller may free it while the staged file is checked
        yield staged
        try:
            with signals_deferred():  # all outputs in place, or none
                if staged.data_name is not None and not staged.discard:
                    os.replace(stage / staged.data_name, directory / staged.data_name)
                if not staged.discard:
                    os.replace(staged.path, final)
                while staged.companions:
                    tmp, path = staged.companions[0]
                    os.replace(tmp, path)
                    staged.companions.pop(0)
        except OSError as exc:
            raise UsageError(f"{final}: cannot write output: {exc.strerror or exc}") from exc
        if not staged.discard:
            _remove_old_data(final, staged.data_name, keep)
    finally:
        with signals_deferred():
            for tmp, _ in staged.companions if staged is not None else ():
                with contextlib.suppress(OSError):
                    tmp.unlink()
            shutil.rmtree(stage, ignore_errors=True)


_DATA_SUFFIX = r"\.[0-9a-f]{16}\.data"


def data_prefix(final: Path) -> str:
    """The start of the names of `final`'s external data files: its own name, or when that with
    `.<hash>.data` would be too long for the file system, a cut of it plus a hash of the whole."""
    limit = name_max(final.parent if str(final.parent) else Path(".")) - len(".0123456789abcdef.data")
    if len(os.fsencode(final.name)) <= limit:
        return final.name
    tag = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:8]
    return f"{fit_name(final.name, limit - len(tag) - 1)}.{tag}"


def _remove_old_data(final: Path, current: str | None, keep: tuple[Path, ...]) -> None:
    """Remove data files an earlier write of `final` left (named by data_prefix, any hash): found
    by their names in the directory, so the previous model file is never read."""
    directory = final.parent if str(final.parent) else Path(".")
    pattern = re.compile(re.escape(data_prefix(final)) + _DATA_SUFFIX)
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == current or not pattern.fullmatch(entry.name):
                continue
            path = directory / entry.name
            if not entry.is_file(follow_symlinks=False) or any(same_file(path, k) for k in keep):
                continue
            with contextlib.suppress(OSError):
                path.unlink()


def _write_staged(model: onnx.ModelProto, final: Path, stage: Path, external: bool) -> StagedModel:
    path = stage / "model.onnx"
    if not external:
        if model_size(model) > LARGE_MODEL_BYTES:
            with open(path, "wb") as fh:
                size = write_serialized(model, fh)
        else:
            data = serialize_model(model)
            path.write_bytes(data)
            size = len(data)
        _fsync(path)
        return StagedModel(path, size, final, None)
    skeleton = _without_initializers(model)
    digest = hashlib.sha256()
    tmp_data = stage / "weights.data"
    entries: list[tuple[onnx.TensorProto, int, int]] = []
    with open(tmp_data, "wb") as fh:
        offset = 0
        for init in model.graph.initializer:
            raw = init.raw_data if init.HasField("raw_data") else None
            if raw is None and init.data_type != onnx.TensorProto.STRING:
                raw = numpy_helper.to_array(init).tobytes() if _nbytes(init) >= EXTERNAL_THRESHOLD else None
            if raw is None or len(raw) < EXTERNAL_THRESHOLD:
                skeleton.graph.initializer.append(init)
                continue
            pad = (-offset) % _ALIGN
            fh.write(b"\0" * pad)
            digest.update(b"\0" * pad)
            offset += pad
            fh.write(raw)
            digest.update(raw)
            ref = onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
            ref.data_location = onnx.TensorProto.EXTERNAL
            skeleton.graph.initializer.append(ref)
            entries.append((skeleton.graph.initializer[-1], offset, len(raw)))
            offset += len(raw)
        fh.flush()
        os.fsync(fh.fileno())
    data_name = f"{data_prefix(final)}.{digest.hexdigest()[:16]}.data"
    os.replace(tmp_data, stage / data_name)
    for tensor, start, length in entries:
        for key, value in (("location", data_name), ("offset", str(start)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
    path.write_bytes(skeleton.SerializeToString(deterministic=True))
    _fsync(path)
    return StagedModel(path, path.stat().st_size + offset, final, data_name)


_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer


def write_serialized(model: onnx.ModelProto, fh) -> int:  # noqa: ANN001 - a binary file
    """Write the bytes of model.SerializeToString(deterministic=True) to `fh` one initializer at a
    time, without the whole serialised copy (upb builds it in one piece: +1x the model at the peak
    of a big model's write). Fields go in field-number order, as the serialiser writes them, so the
    bytes are the same. Returns the number of bytes written."""
    graph = model.graph
    graph_head = _fields(graph, lambda n: n < _GRAPH_INITIALIZER)
    graph_tail = _fields(graph, lambda n: n > _GRAPH_INITIALIZER)
    sizes = [_measured_size(t) for t in graph.initializer]
    graph_len = len(graph_head) + len(graph_tail)
    graph_len += sum(len(_key(_GRAPH_INITIALIZER)) + len(_varint(n)) + n for n in sizes)
    written = 0
    for part in (
        _fields(model, lambda n: n < _MODEL_GRAPH),
        _key(_MODEL_GRAPH) + _varint(graph_len) if model.HasField("graph") else b"",
        graph_head if model.HasField("graph") else b"",
    ):
        fh.write(part)
        written += len(part)
    for t, n in zip(graph.initializer, sizes, strict=True):
        data = t.SerializeToString(deterministic=True)
        if len(data) != n:
            raise InternalError(f"initializer '{t.name}' serialised to {len(data)} bytes, measured {n}")
        for part in (_key(_GRAPH_INITIALIZER) + _varint(n), data):
            fh.write(part)
            written += len(part)
        del data
    for part in (graph_tail if model.HasField("graph") else b"", _fields(model, lambda n: n > _MODEL_GRAPH)):
        fh.write(part)
        written += len(part)
    return written


def _fields(message, keep) -> bytes:  # noqa: ANN001 - a protobuf message, a predicate on field numbers
    """The serialised fields of `message` whose numbers `keep` accepts."""
    part = type(message)()
    for field, value in message.ListFields():
        if not keep(field.number):
            continue
        repeated = getattr(field, "is_repeated", None)  # newer protobuf; `label` before
        if repeated if repeated is not None else field.label == field.LABEL_REPEATED:
            getattr(part, field.name).extend(value)
        elif field.message_type is not None:
            getattr(part, field.name).CopyFrom(value)
        else:
            setattr(part, field.name, value)
    return part.SerializeToString(deterministic=True)


def _key(number: int) -> bytes:
    return _varint(number << 3 | 2)  # a length-delimited field


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A skeleton: every field of the model but the main graph's initializers (not copied)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    return light


def _copy_fields(src, dst, skip: str) -> None:  # noqa: ANN001 - protobuf messages
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _nbytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def external_data_file(base_dir: Path, location: str) -> Path:
    """The file an external-data `location` names inside the model's directory `base_dir`: the one
    check of every reader (load_model for convert and compare, inspect's sizes and values).

    Raises ValueError, without touching anything outside `base_dir`, when the location is empty,
    absolute, climbs out with '..', or leads out through a symbolic link, or when the file there is
    not a regular file (a FIFO or device would block or never end a read). A missing file is
    returned as it is: the caller reports it as missing.
    """
    rel = Path(location)
    if not location or location.startswith(("/", "\\")) or rel.is_absolute():
        raise ValueError(
            f"external data location {location!r} is {'empty' if not location else 'absolute'}"
            + ("" if not location else ": outside the model's directory")
        )
    root = Path(os.path.realpath(base_dir))
    current, parts, links = root, list(rel.parts), 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current == root:
                raise ValueError(f"external data location {location!r} is outside the model's directory")
            current = current.parent
            continue
        step = current / part
        try:
            mode = os.lstat(step).st_mode
        except OSError:
            return step.joinpath(*parts)  # missing (or unreadable): reported by the caller
        if stat.S_ISLNK(mode):
            links += 1
            target = os.readlink(step)
            if links > 40 or target.startswith("/"):
                raise ValueError(
                    f"external data location {location!r} is a symbolic link out of the model's directory"
                )
            parts = list(Path(target).parts) + parts
            continue
        current = step
    if current == root or not stat.S_ISREG(os.stat(current).st_mode):
        raise ValueError(f"external data location {location!r} is not a regular file")
    return current


def _check_external_locations(model: onnx.ModelProto, base_dir: Path) -> None:
    for t in _external_tensors(model):
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        external_data_file(base_dir, location)


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Tensors stored outside the model file: initializers and tensor attributes, subgraphs'
    and functions' included (the tensors onnx loads external data for)."""

    def tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in (*([a.g] if a.HasField("g") else []), *a.graphs):
                    yield from g.initializer
                    yield from tensors(g.node)

    everything = itertools.chain(
        model.graph.initializer, tensors(model.graph.node), *(tensors(f.node) for f in model.functions)
    )
    for t in everything:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


def external_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The external data files a model file refers to that exist (inside its directory)."""
    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file refers to nothing
        return []
    files: dict[str, Path] = {}
    for t in _external_tensors(model):
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if location in files:
            continue
        try:
            f = external_data_file(p.parent, location)
        except ValueError:
            continue
        if f.is_file():
            files[location] = f
    return list(files.values())


def file_size(path: str | os.PathLike[str]) -> int:
    """Size on disk of a model including external data files next to it."""
    return Path(path).stat().st_size + sum(f.stat().st_size for f in external_data_files(path))


def load_valid_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """load_model, then check_valid. A big model file gets onnx.checker's structural check from
    the file before it is loaded: the checker's own copy of the model (it serialises one when given
    a loaded model) and ours are then never in memory at once (a 512 MiB model: 1.6 -> 1.1 GB
    peak). What cannot be read as a model is still load_model's error, as for a small file."""
    p = check_model_path(path)
    found: Exception | None = None
    checked = p.stat().st_size > LARGE_MODEL_BYTES
    if checked:
        try:
            onnx.checker.check_model(str(p))
        except (onnx.checker.ValidationError, ValueError) as exc:
            found = exc  # said once the file is known to load, as check_valid would
        except Exception:  # noqa: BLE001 - unreadable: load_model says why
            checked = False
    model = load_model(p)
    if found is not None:
        raise _invalid(p, found) from found
    check_valid(model, p, structure_checked=checked)
    return model


def _invalid(path: str | os.PathLike[str], exc: Exception) -> BadModelError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BadModelError(f"{path}: not a valid ONNX model: {first}")


def check_valid(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, structure_checked: bool = False
) -> None:
    """onnx.checker's structural check of an input model (not the full shape-inference check),
    unless `structure_checked` (done from its file); an invalid model is a BadModelError naming
    the file and the first complaint."""
    try:
        if structure_checked:
            pass
        elif model_size(model) > PROTOBUF_LIMIT:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise _invalid(path, exc) from exc
    # The checker does not compare a tensor's bytes with its shape; reading it later would fail.
    for t in model.graph.initializer:
        if t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL:
            try:
                expected = _nbytes(t)
            except (KeyError, ValueError, TypeError):
                raise BadModelError(
                    f"{path}: initializer '{t.name}' has an unsupported data type {t.data_type}"
                ) from None
            if len(t.raw_data) != expected:
                raise BadModelError(
                    f"{path}: initializer '{t.name}' holds {len(t.raw_data)} bytes, "
                    f"its shape {list(t.dims)} needs {expected}"
                )
