"""Rendering of result dataclasses to rich tables, plain text, JSON; computes nothing.

All output goes through `out()` (results, stdout) and `err()` (logs and progress, stderr).
One module per command renders its result; this module holds what they share.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

SCHEMA_VERSION = 1


def out(text: str) -> None:
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    sys.stdout.flush()


def err(text: str) -> None:
    sys.stderr.write(text + ("\n" if not text.endswith("\n") else ""))
    sys.stderr.flush()


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
