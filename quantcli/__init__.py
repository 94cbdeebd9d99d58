"""quantcli: post-training quantization of ONNX models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ConvertOptions", "ConvertResult", "__version__", "convert"]


def __getattr__(name: str):  # noqa: ANN202 - lazy: `quantcli --help` must not import onnx
    if name in ("convert", "ConvertOptions", "ConvertResult"):
        from quantcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'quantcli' has no attribute {name!r}")
