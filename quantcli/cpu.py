"""What the host CPU offers INT8 kernels: VNNI decides whether U8S8 products can saturate."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8")


@lru_cache(maxsize=1)
def has_vnni() -> bool | None:
    """True/False on x86 Linux (from /proc/cpuinfo), None where it cannot be told (other systems).

    Without VNNI, onnxruntime's x86 U8S8 kernels use VPMADDUBSW, whose int16 intermediate sums of
    two u8 x s8 products can saturate; 7-bit weights (--reduce-range) avoid it.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None
    )
    if flags is None:
        return None
    return any(f in flags for f in _VNNI_FLAGS)
