"""Reading and writing ONNX models: one clear error for a bad file, atomic writes, sizes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from quantcli.errors import BadModelError, UsageError

# Protobuf refuses to serialise a message of 2 GiB or more; above this, weights go to external data.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model (with its external data) or raise BadModelError naming the file."""
    p = Path(path)
    if not p.exists():
        raise BadModelError(f"{p}: no such file")
    if p.is_dir():
        raise BadModelError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise BadModelError(f"{p}: file is empty")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except DecodeError as exc:
        raise BadModelError(f"{p}: not an ONNX model (protobuf decode failed: {exc})") from exc
    except FileNotFoundError as exc:
        raise BadModelError(f"{p}: external data file missing: {exc.filename or exc}") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise BadModelError(f"{p}: cannot read model: {exc}") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise BadModelError(f"{p}: not an ONNX model (no graph or no nodes)")
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


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the target directory, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def serialize_model(model: onnx.ModelProto) -> bytes:
    """Serialise deterministically; models over the protobuf limit are refused with a clear error."""
    if model.ByteSize() > PROTOBUF_LIMIT:
        raise UsageError("model exceeds 2 GB; saving with external data is not supported yet")
    return model.SerializeToString(deterministic=True)


def write_model_bytes(data: bytes, path: str | os.PathLike[str]) -> int:
    """Write a serialised model atomically; returns the number of bytes written."""
    try:
        write_bytes_atomic(Path(path), data)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write output: {exc.strerror or exc}") from exc
    return len(data)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Save atomically; returns the number of bytes written."""
    return write_model_bytes(serialize_model(model), path)


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
