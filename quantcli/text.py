"""Wording shared by messages and reports."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable


def count(n: int, noun: str) -> str:
    """'1 sample', '2 samples'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def exclude_flag(names: Iterable[str]) -> str:
    """The `--exclude-nodes` flag that names exactly these nodes, to paste into a shell: the shell
    pattern characters of a name escaped (`[*]`), the list quoted for a POSIX shell."""
    patterns = [re.sub(r"([*?\[])", r"[\1]", n) for n in names]
    return f"--exclude-nodes {shlex.quote(','.join(patterns))}"
