"""Upgrade models below opset 13 (per-channel QuantizeLinear needs it) to opset 13."""

from __future__ import annotations

import onnx
from onnx import version_converter

from quantcli.errors import UnsupportedModelError
from quantcli.preprocess.base import Pass, PassResult

MIN_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


class UpgradeOpset(Pass):
    name = "upgrade_opset"

    def call(self, model: onnx.ModelProto) -> PassResult:
        version = default_opset(model)
        if version >= MIN_OPSET:
            return PassResult(model, False)
        try:
            upgraded = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeError/ValueError
            raise UnsupportedModelError(
                f"cannot upgrade opset {version} to {MIN_OPSET} for quantization: "
                f"{str(exc).splitlines()[0]}; re-export the model at opset >= {MIN_OPSET}"
            ) from exc
        return PassResult(upgraded, True, [f"opset upgraded from {version} to {MIN_OPSET}"])


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    return UpgradeOpset().call(model).model
