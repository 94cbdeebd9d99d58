"""Where results go: output paths checked before any work, short temporary names, atomic commits.

Every file a command writes (the model, its external data, the plan, compare's reports) is written
under a temporary name in its destination directory and renamed into place; the destination is
never opened or read. A destination that exists must be a regular file: a device, FIFO, socket or
directory there (or a symbolic link to one) is refused before the slow work starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from quantcli.errors import UsageError

NAME_MAX = 255  # when the file system does not say (POSIX's usual limit, in bytes)
TEMP_PREFIX = ".quantcli-"  # temporaries are short: they fit wherever the final name fits

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def name_max(directory: Path) -> int:
    """The longest file name, in bytes, that `directory`'s file system takes."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, TypeError):
        return NAME_MAX


def fit_name(name: str, limit: int) -> str:
    """`name` cut to at most `limit` bytes in the file system's encoding, on a character boundary."""
    kept, size = [], 0
    for ch in name:
        size += len(os.fsencode(ch))
        if size > limit:
            break
        kept.append(ch)
    return "".join(kept)


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _kind(mode: int) -> str | None:
    """What a file that is not a regular one is, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def input_kind(path: str | os.PathLike[str]) -> str | None:
    """What an existing input path is when it is not a regular file (links followed): a device, a
    FIFO or a socket would block or never end a read; None for a regular file."""
    try:
        return _kind(os.stat(path).st_mode)
    except OSError:
        return None


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to `path` replaces: `path`, or the end of the symbolic links it is (a
    link is written through, never replaced: /dev/stdout stays a link)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _location(path: Path) -> Path:
    """Where `path` would be created: its directory resolved (symbolic links, '..'), then its name."""
    return Path(os.path.realpath(_parent(path))) / path.name


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same inode when both exist (another spelling, a symbolic
    or hard link), else the same place in the same directory."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    try:
        return _location(a) == _location(b) or Path(os.path.realpath(a)) == Path(os.path.realpath(b))
    except (OSError, ValueError):
        return False


def output_path(text: str | os.PathLike[str]) -> Path:
    """An output option's value as a path; one that ends in a slash names a directory (Path would
    drop the slash and write a file by that name), refused here while the text still has it."""
    if str(text).endswith(("/", os.sep)):
        raise UsageError(f"{text}: names a directory, expected a file path")
    return Path(text)


def check_output_path(output: str | os.PathLike[str], inputs: list[Path]) -> Path:
    """Validate where a result will go before any work is done; raises UsageError.

    Refused: the path of an input (in any spelling, or a link to it), a missing directory, a name
    longer than the file system allows, an existing destination that is not a regular file (a
    device such as /dev/null, a FIFO, a socket, a directory, or a symbolic link to one), a directory
    where no file can be created. The destination itself is never opened; a symbolic link there is
    written through (the file it leads to is replaced, not the link), so that file is checked.
    """
    out = output_path(output)
    for inp in inputs:
        if same_file(out, Path(inp)):
            raise UsageError(f"{out}: output path is the input model {inp}; choose another path")
    target = write_target(out)
    parent = _parent(target)
    if not parent.exists():
        raise UsageError(f"{out}: output directory {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"{out}: {parent} is not a directory")
    if not target.name or target.name in (".", ".."):
        raise UsageError(f"{out}: is a directory, expected a file path")
    limit = name_max(parent)
    size = len(os.fsencode(target.name))
    if size > limit:
        raise UsageError(
            f"{out}: file name is {size} bytes long, longer than the {limit} its file system allows"
        )
    try:
        mode = os.stat(out).st_mode  # follows a symbolic link: what a write would reach
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        if os.path.lexists(out) and not os.path.exists(out):
            mode = None  # a dangling link: the rename replaces the link itself
        else:
            raise UsageError(f"{out}: cannot use as output: {exc.strerror or exc}") from exc
    kind = None if mode is None else _kind(mode)
    if kind == "a directory":
        raise UsageError(f"{out}: is a directory, expected a file path")
    if kind is not None:
        link = "a symbolic link to " if out.is_symlink() else ""
        raise UsageError(
            f"{out}: is {link}{kind}, not a regular file; outputs are written only as regular files"
        )
    _probe_writable(out, parent)
    return target


def check_outputs(outputs: Mapping[str, str | os.PathLike[str] | None], inputs: list[Path]) -> None:
    """check_output_path on every output a command writes (option name -> path, None: not asked
    for), and no two of them at one path."""
    given = [(option, Path(path)) for option, path in outputs.items() if path is not None]
    for i, (option, path) in enumerate(given):
        check_output_path(path, inputs)
        for other, earlier in given[:i]:
            if same_file(path, earlier):
                raise UsageError(
                    f"{path}: {other} and {option} name the same file; give each output its own path"
                )


def _probe_writable(out: Path, parent: Path) -> None:
    """Create and remove a temporary file where the output will go: a read-only directory or file
    system is reported now, not after the work."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=parent)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write output: {exc.strerror or exc}") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_temp(directory: Path, data: bytes) -> Path:
    """`data` in a new temporary file (short name, the usual mode) in `directory`, synced to disk."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600; a written file gets the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the target directory, then rename it over `path`."""
    path = write_target(path)
    tmp = None
    try:
        tmp = write_temp(_parent(path), data)
        with signals_deferred():
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None:
            with signals_deferred(), contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while outputs are put in place or temporaries removed: a signal that
    arrives meanwhile is delivered again once the block is over, so a rename group is never cut in
    half. Outside the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:  # noqa: ARG001
        caught.append(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is None or handler == signal.SIG_IGN:
            continue  # ignored, or set outside Python: left as it is
        previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            os.kill(os.getpid(), caught[0])
