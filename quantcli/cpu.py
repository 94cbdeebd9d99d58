"""CPU kinds: the target a model is made for (--target-cpu) and the host's features (for measuring).

onnxruntime's x86 U8S8 integer kernels add pairs of u8 x s8 products into a saturating int16
(VPMADDUBSW) unless the CPU has VNNI; ARM and VNNI CPUs accumulate in int32 (FIELD_NOTES.md,
quantize/saturation.py). What a converted model contains depends only on its *target*; the host's
features only say which kernels a measurement ran on. Tests pin the host with QUANTCLI_CPU_FEATURES
(e.g. "avx2", "avx2,avx512f,avx512_vnni", "arm") instead of inheriting the machine's.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ENV = "QUANTCLI_CPU_FEATURES"
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8")
_X86 = ("x86_64", "amd64", "i686", "i386", "x86")
_ARM = ("aarch64", "arm64", "armv8l", "armv7l")

# --target-cpu: the CPU kind the model is made for. "any" is exact on every kind.
TARGETS = {
    "any": "every CPU onnxruntime runs on (x86 with or without VNNI, ARM): no INT8 pair can saturate",
    "avx2": "x86 without VNNI (AVX2, AVX-512 without VNNI): no INT8 pair can saturate",
    "vnni": "x86 with AVX512-VNNI or AVX-VNNI only: full-range INT8 weights, which x86 CPUs without VNNI may saturate",
    "arm": "ARM64 only: full-range INT8 weights, which x86 CPUs without VNNI may saturate",
}
DEFAULT_TARGET = "any"
TABLE_KINDS = ("avx2", "vnni", "arm")  # the CPU kinds a speed cost table is measured for (`any` runs on all)
# --target-cpu host: the converting CPU is the target. Resolved once, when converting, to its kind
# (host_target); the plan and the model record that kind, so a replay elsewhere is the same model.
HOST = "host"


def target_saturates(target: str) -> bool:
    """Whether the target includes CPUs whose U8S8 kernels add pairs in a saturating int16."""
    return target in ("any", "avx2")


def host_target(features: CpuFeatures | None = None) -> str:
    """The target that is this CPU (`host_features`): vnni, arm, avx2 for x86 without VNNI (its
    U8S8 kernels add pairs in int16 whatever else it has), any where the kind is unknown."""
    kind = (features or host_features()).kind
    return {"vnni": "vnni", "arm": "arm", "avx512": "avx2", "avx2": "avx2", "x86": "avx2"}.get(
        kind, DEFAULT_TARGET
    )


@dataclass(frozen=True)
class CpuFeatures:
    """What a CPU offers onnxruntime's integer kernels. `source`: where the flags were read."""

    arch: str  # "x86_64", "arm64" or "other"
    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    source: str = "unknown"

    @property
    def u8s8_saturates(self) -> bool | None:
        """True on x86 without VNNI, False on VNNI and ARM, None where unknown."""
        if self.arch == "arm64":
            return False
        if self.arch != "x86_64":
            return None
        return not self.vnni

    @property
    def kind(self) -> str:
        """One word for reports: vnni, avx512, avx2, x86, arm or unknown."""
        if self.arch == "arm64":
            return "arm"
        if self.arch != "x86_64":
            return "unknown"
        return "vnni" if self.vnni else "avx512" if self.avx512 else "avx2" if self.avx2 else "x86"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "avx2": self.avx2,
            "avx512": self.avx512,
            "vnni": self.vnni,
            "u8s8_saturates": self.u8s8_saturates,
            "source": self.source,
        }


def parse_features(text: str, source: str) -> CpuFeatures:
    """Features from a comma- or space-separated flag list ("avx2", "avx512_vnni", "arm", ...)."""
    flags = set(text.replace(",", " ").lower().split())
    if flags & {"arm", "arm64", "aarch64", "neon"}:
        return CpuFeatures("arm64", source=source)
    vnni = bool(flags & {*_VNNI_FLAGS, "vnni"})
    avx512 = bool({f for f in flags if f.startswith("avx512")})
    return CpuFeatures(
        "x86_64", avx2="avx2" in flags or avx512 or vnni, avx512=avx512, vnni=vnni, source=source
    )


def host_features() -> CpuFeatures:
    """The host's features: QUANTCLI_CPU_FEATURES when set, else /proc/cpuinfo (x86 Linux) or the
    machine type."""
    override = os.environ.get(ENV, "").strip()
    if override:
        return parse_features(override, ENV)
    return _detected()


@lru_cache(maxsize=1)
def _detected() -> CpuFeatures:
    machine = platform.machine().lower()
    if machine in _ARM:
        return CpuFeatures("arm64", source="platform")
    if machine not in _X86:
        return CpuFeatures("other", source="platform")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuFeatures("other", source="platform")
    flags = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return CpuFeatures("other", source="platform")
    return parse_features(flags, "/proc/cpuinfo")
