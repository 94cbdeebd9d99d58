"""Upgrade models below opset 13 (per-channel QuantizeLinear needs it) to opset 13, and their IR
version to the one that opset needs.

onnx's version converter changes the opset only: an IR 3 model (opset <= 8, as old exporters
wrote them) keeps IR 3 at opset 13, where onnx.checker then requires every initializer to be
listed as a graph input, including the scales and zero points the rewriter adds. Before IR 4 an
initializer listed as an input is not an overridable default but the only way to declare it
(onnx IR.md), so dropping those entries when raising the IR version keeps the model's meaning.
"""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from quantcli.errors import UnsupportedModelError
from quantcli.preprocess.base import Pass, PassResult
from quantcli.preprocess.initializer_inputs import unlist_initializers

MIN_OPSET = 13
# IR 4 made initializers independent of graph inputs (an initializer listed as an input became an
# overridable default).
_INITIALIZERS_AS_DEFAULTS_IR = 4


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


class UpgradeOpset(Pass):
    name = "upgrade_opset"

    def call(self, model: onnx.ModelProto) -> PassResult:
        version = default_opset(model)
        notes: list[str] = []
        if version < MIN_OPSET:
            try:
                model = version_converter.convert_version(model, MIN_OPSET)
            except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeError/ValueError
                raise UnsupportedModelError(
                    f"cannot upgrade opset {version} to {MIN_OPSET} for quantization: "
                    f"{str(exc).splitlines()[0]}; re-export the model at opset >= {MIN_OPSET}"
                ) from exc
            notes.append(f"opset upgraded from {version} to {MIN_OPSET}")
        if notes or model.ir_version < _INITIALIZERS_AS_DEFAULTS_IR:
            notes += upgrade_ir_version(model)
        return PassResult(model, bool(notes), notes)


def upgrade_ir_version(model: onnx.ModelProto) -> list[str]:
    """Raise the model's IR version (in place) to the least its opsets need; an IR < 4 model's
    initializers leave the graph's input list. Returns the notes for the report."""
    before = model.ir_version
    try:
        needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    except (KeyError, TypeError, ValueError):  # an opset newer than this onnx knows: nothing to raise it to
        return []
    if before >= needed:
        return []
    if before < _INITIALIZERS_AS_DEFAULTS_IR:
        unlist_initializers(model.graph)
    model.ir_version = needed
    return [f"IR version upgraded from {before} to {needed}"]


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    return UpgradeOpset().call(model).model
