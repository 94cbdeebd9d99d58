"""Reading and writing ONNX models: one clear error for a bad file, atomic writes, sizes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import numpy_helper

from quantcli.errors import BadModelError, UsageError

# Protobuf refuses to serialise a message of 2 GiB or more; above this, weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1


def check_model_path(path: str | os.PathLike[str]) -> Path:
    """The first checks of a model path, before anything reads it; raises BadModelError."""
    p = Path(path)
    if not p.exists():
        raise BadModelError(f"{p}: no such file")
    if p.is_dir():
        raise BadModelError(f"{p}: is a directory, expected an .onnx file")
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
        model = onnx.load(str(p), load_external_data=external_data)
    except DecodeError as exc:
        raise BadModelError(f"{p}: not an ONNX model (protobuf decode failed: {exc})") from exc
    except FileNotFoundError as exc:
        raise BadModelError(f"{p}: external data file missing: {exc.filename or exc}") from exc
    except onnx.checker.ValidationError as exc:  # onnx checks external data locations while loading
        first = str(exc).strip().splitlines()[0]
        raise BadModelError(f"{p}: cannot read its external data: {first}") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadModelError(f"{p}: cannot read model: {exc}") from exc
    if not model.HasField("graph") or not (model.graph.node or model.graph.output):
        raise BadModelError(f"{p}: not an ONNX model (no graph, or a graph with no nodes and no outputs)")
    if not model.opset_import:
        raise BadModelError(f"{p}: not an ONNX model (no opset_import)")
    return model


def check_output_path(output: str | os.PathLike[str], inputs: list[Path]) -> Path:
    """Validate where a result will go before any work is done; raises UsageError."""
    out = Path(output)
    for inp in inputs:
        with contextlib.suppress(OSError):
            if out.resolve() == inp.resolve():
                raise UsageError(f"{out}: output path is the input model; choose another path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"{out}: output directory {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{out}: {parent} is not a directory")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory, expected a file path")
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the target directory, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def model_size(model: onnx.ModelProto) -> int:
    """Serialised size in bytes; above the protobuf limit (where ByteSize() itself raises) a value
    just over the limit."""
    try:
        return model.ByteSize()
    except EncodeError:
        return PROTOBUF_LIMIT + 1


def serialize_model(model: onnx.ModelProto) -> bytes:
    """Serialise deterministically; a model over the protobuf limit needs `write_model` instead."""
    if model_size(model) > PROTOBUF_LIMIT:
        raise UsageError("model exceeds 2 GB: it can only be written with its weights as external data")
    return model.SerializeToString(deterministic=True)


def write_model_bytes(data: bytes, path: str | os.PathLike[str]) -> int:
    """Write a serialised model atomically; returns the number of bytes written."""
    try:
        write_bytes_atomic(Path(path), data)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write output: {exc.strerror or exc}") from exc
    return len(data)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Save atomically (external data beside it above 2 GB); returns the bytes written."""
    with staged_model(model, Path(path)) as staged:
        return staged.size


EXTERNAL_THRESHOLD = 1024  # initializers at least this big go to the external data file
_ALIGN = 4096  # external tensors start on page boundaries so onnxruntime can map them


@dataclass
class StagedModel:
    """A model written under temporary names in its destination directory, not yet in place."""

    path: Path  # the staged model file: readable by onnx.checker and onnxruntime
    size: int  # bytes of the model file plus its external data
    final: Path
    data_name: str | None  # external data file name (relative to the model), if any


@contextlib.contextmanager
def staged_model(
    model: onnx.ModelProto, final: Path, *, external: bool | None = None
) -> Iterator[StagedModel]:
    """Write `model` into a temporary directory beside `final`; rename into place when the block
    exits normally, remove everything when it raises (or is interrupted).

    Models over the protobuf limit (or with `external=True`) keep their large initializers in
    `<name>.<hash>.data` next to the model; the hash makes the name change with the content, so a
    crash between the two renames leaves the previous model and its data file consistent. The
    model object is not modified.
    """
    final = Path(final)
    use_external = model_size(model) > PROTOBUF_LIMIT if external is None else external
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent or "."))
    except OSError as exc:
        raise UsageError(f"{final}: cannot write output: {exc.strerror or exc}") from exc
    try:
        try:
            staged = _write_staged(model, final, stage, use_external)
        except OSError as exc:
            raise UsageError(f"{final}: cannot write output: {exc.strerror or exc}") from exc
        del model  # the caller may free it while the staged file is checked
        yield staged
        previous_data = _external_locations(final) if final.exists() else set()
        if staged.data_name is not None:
            os.replace(stage / staged.data_name, final.parent / staged.data_name)
        os.replace(staged.path, final)
        # Only data files this function named for this output are ours to remove.
        for name in previous_data - {staged.data_name}:
            if re.fullmatch(re.escape(final.name) + r"\.[0-9a-f]{16}\.data", name):
                with contextlib.suppress(OSError):
                    (final.parent / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_staged(model: onnx.ModelProto, final: Path, stage: Path, external: bool) -> StagedModel:
    if not external:
        data = serialize_model(model)
        path = stage / final.name
        path.write_bytes(data)
        _fsync(path)
        return StagedModel(path, len(data), final, None)
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
    data_name = f"{final.name}.{digest.hexdigest()[:16]}.data"
    os.replace(tmp_data, stage / data_name)
    for tensor, start, length in entries:
        for key, value in (("location", data_name), ("offset", str(start)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
    path = stage / final.name
    path.write_bytes(skeleton.SerializeToString(deterministic=True))
    _fsync(path)
    return StagedModel(path, path.stat().st_size + offset, final, data_name)


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


def _external_locations(path: Path) -> set[str]:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable previous output has no data files to clean
        return set()
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def file_size(path: str | os.PathLike[str]) -> int:
    """Size on disk of a model including external data files next to it."""
    p = Path(path)
    total = p.stat().st_size
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - size of an unreadable file is just its bytes
        return total
    seen: set[str] = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = p.parent / entry.value
                if ext.exists():
                    total += ext.stat().st_size
    return total


def check_valid(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """onnx.checker's structural check of an input model (not the full shape-inference check);
    an invalid model is a BadModelError naming the file and the first complaint."""
    try:
        if model_size(model) > PROTOBUF_LIMIT:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadModelError(f"{path}: not a valid ONNX model: {first}") from exc
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
