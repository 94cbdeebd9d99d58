"""Rendering of result dataclasses to rich tables, plain text, JSON; computes nothing.

All output goes through `out()` (results, stdout) and `err()` (logs and progress, stderr).
One module per command renders its result; this module holds what they share.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

SCHEMA_VERSION = 1


def out(text: str) -> None:
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    sys.stdout.flush()


def err(text: str) -> None:
    """One line on stderr, whatever it quotes: see one_line."""
    sys.stderr.write(one_line(text.removesuffix("\n")) + "\n")
    sys.stderr.flush()


# C0 and C1 control characters (newline, carriage return, escape ...) and Unicode's line separators
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with its control characters escaped as Python writes them in a string literal (a
    newline as \\n, ESC as \\x1b): a file name that holds them cannot split or recolour a message."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def number(x: float | None) -> float | str | None:
    """JSON has no infinity or NaN: they become the strings "inf", "-inf" and "nan"."""
    if x is None:
        return None
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def render_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout (no NaN/Infinity: use number() for floats that may be infinite)."""
    out(json.dumps(data, indent=2, allow_nan=False))
