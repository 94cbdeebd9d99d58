"""quantcli: post-training quantization of ONNX models."""

from __future__ import annotations

__version__ = "0.1.0"

from quantcli.api import ConvertOptions, ConvertResult, convert  # noqa: E402

__all__ = ["ConvertOptions", "ConvertResult", "__version__", "convert"]
