"""What a .npy/.npz sample file holds, read from its headers, and its rows read one at a time: the
memory a sample takes is known before it is read (a 2 MB .npz can inflate to gigabytes), and a
batched file is never held whole."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

Header = tuple[tuple[int, ...], np.dtype]  # an array's shape and dtype
_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError)


def array_headers(path: Path, npy_name: str = "") -> dict[str, Header] | None:
    """Shape and dtype of each array of a .npz file (a .npy file's under `npy_name`), from the .npy
    headers without the data; None for a file that cannot be read so (reading it says why)."""
    try:
        if path.suffix != ".npz":
            with open(path, "rb") as f:
                shape, _, dtype = _header(f)
                return {npy_name: (shape, dtype)}
        found = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as f:
                        shape, _, dtype = _header(f)
                        found[info.filename[:-4]] = (shape, dtype)
        return found
    except _ERRORS:
        return None


def nbytes(arrays: dict[str, Header]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in arrays.values())


def _header(f) -> tuple[tuple[int, ...], bool, np.dtype]:  # noqa: ANN001 - a binary file object
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


class BatchRows:
    """The rows of a batched .npz file, each array's row i as a [1, ...] array, read in order from
    the archive's members: one row in memory, never the whole file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._archive = zipfile.ZipFile(path)
        self._members: dict[str, list] = {}  # name -> [open member, row shape, dtype, next row]
        try:
            for info in self._archive.infolist():
                f = self._archive.open(info)
                self._members[info.filename[:-4]] = [f]
                shape, fortran, dtype = _header(f)
                if not info.filename.endswith(".npy") or fortran or dtype.hasobject or not shape:
                    raise ValueError("not laid out by rows")
                self._members[info.filename[:-4]] += [(1, *shape[1:]), dtype, 0]
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: Path) -> BatchRows | None:
        """The file's row reader, or None where its rows cannot be read one at a time (Fortran
        order, a member that is not .npy, a damaged archive): read it whole then."""
        try:
            return cls(path)
        except _ERRORS:
            return None

    def row(self, i: int) -> dict[str, np.ndarray] | None:
        """Row i of every array; None when a row before the last one read is asked for or the data
        ends early (read the file whole then)."""
        out = {}
        try:
            for name, member in self._members.items():
                f, shape, dtype, at = member
                size = math.prod(shape) * dtype.itemsize
                if i < at:
                    return None
                if i > at:
                    f.seek((i - at) * size, 1)
                array = np.empty(shape, dtype)
                if f.readinto(memoryview(array.reshape(-1).view(np.uint8))) != size:
                    return None
                member[3] = i + 1
                out[name] = array
        except _ERRORS:
            return None
        return out

    def close(self) -> None:
        for member in self._members.values():
            member[0].close()
        self._archive.close()
