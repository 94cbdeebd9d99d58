"""Pre-processing: IR convention, opset upgrade, node naming, constant folding, Conv+BN fusion, shape inference."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from quantcli.graph import copy_model
from quantcli.preprocess.base import Pass, PassResult
from quantcli.preprocess.float32 import ComputeInFloat32
from quantcli.preprocess.fold_constants import FoldConstants
from quantcli.preprocess.fuse_bn import FuseConvBatchNorm
from quantcli.preprocess.fuse_pad import FusePadConv
from quantcli.preprocess.initializer_inputs import DropInitializerInputs
from quantcli.preprocess.ir import NormalizeIR
from quantcli.preprocess.names import NameNodes
from quantcli.preprocess.opset import UpgradeOpset
from quantcli.preprocess.shapes import InferShapes
from quantcli.preprocess.unused import DropUnusedInitializers


@dataclass
class PreprocessResult:
    model: onnx.ModelProto
    applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


DEFAULT_PASSES: tuple[type[Pass], ...] = (
    NormalizeIR,
    UpgradeOpset,
    DropInitializerInputs,
    NameNodes,
    FoldConstants,
    FuseConvBatchNorm,
    FusePadConv,
    DropUnusedInitializers,
    InferShapes,
)


def preprocess(
    model: onnx.ModelProto,
    *,
    in_place: bool = False,
    float32_from: tuple[int, ...] = (),
    float32_interface: bool = False,
) -> PreprocessResult:
    """Run the default passes on a copy (the caller's model object is left untouched), or on the
    model itself with `in_place` (one copy of the weights fewer, for a model the caller owns).
    `float32_from`: element types (float16, float64) to compute in float32 (preprocess/float32.py),
    the graph inputs/outputs too with `float32_interface`."""
    work = model if in_place else copy_model(model)
    result = PreprocessResult(work)
    passes: list[Pass] = [pass_cls() for pass_cls in DEFAULT_PASSES]
    if float32_from:  # after the opset upgrade, before folding and shape inference
        passes.insert(1, ComputeInFloat32(float32_from, interface=float32_interface))
    for one in passes:
        step: PassResult = one.call(result.model)
        result.model = step.model
        result.notes.extend(step.notes)
        if step.modified:
            result.applied.append(one.name)
    _drop_stale_value_info(result.model)
    return result


def _drop_stale_value_info(model: onnx.ModelProto) -> None:
    live = {o for n in model.graph.node for o in n.output}
    stale = [v for v in model.graph.value_info if v.name not in live]
    for v in stale:
        model.graph.value_info.remove(v)


__all__ = ["PreprocessResult", "preprocess"]
