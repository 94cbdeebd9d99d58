"""What one calibration run holds, known before it runs: each float tensor's bytes for the samples'
actual input shapes, and whether one sample can fit the memory budget at all.

The model's declared shapes often leave dimensions free (batch, height, width) or unknown (past a
Conv on a free spatial axis). Shape inference runs again on the weightless skeleton with the inputs
fixed to the largest shapes the samples declare in their .npy headers; what it still cannot infer
scales with the inputs: a tensor's unknown dimensions are taken as large as the inputs' free
dimensions together (their elements over their declared fixed dimensions), and a tensor is taken
at least as large as the largest input when any of its dimensions (or its shape) is unknown. The
estimate errs high where it guesses, so that a run is never sized from a figure much smaller than
what onnxruntime will allocate.
"""

from __future__ import annotations

import math

import onnx

from quantcli.calibration.data import SampleShapes
from quantcli.errors import BadDataError
from quantcli.preprocess.shapes import skeleton

MiB = 2**20


def tensor_bytes(
    model: onnx.ModelProto, names: list[str], input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, int]:
    """Bytes of each of `names` (float32 tensors) for one run on inputs of `input_shapes`."""
    return estimate_bytes(model, names, input_shapes)[0]


def estimate_bytes(
    model: onnx.ModelProto, names: list[str], input_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, int], set[str]]:
    """(bytes of each of `names` for one run on inputs of `input_shapes`, the names whose figure
    is a guess: a dimension or the whole shape unknown even with the inputs fixed)."""
    inferred = _inferred_dims(model, input_shapes)
    declared = {
        vi.name: [_size(d) for d in _dims(vi)]
        for vi in model.graph.input
        if vi.type.tensor_type.HasField("shape")
    }
    # How much the inputs' free and unknown axes multiply their fixed ones: the factor an
    # activation's own unknown axes are guessed to multiply by.
    free = 1
    largest = 1
    for name, shape in input_shapes.items():
        elements = math.prod(shape)
        largest = max(largest, elements)
        fixed = math.prod(d for d in declared.get(name, []) if d is not None)
        free = max(free, elements // max(1, fixed))
    out = {}
    guessed = set()
    for name in names:
        dims = inferred.get(name)
        if dims is None or None in dims:
            known = math.prod(d for d in dims or [] if d is not None)
            elements = max(known * free, largest)
            guessed.add(name)
        else:
            elements = math.prod(dims)
        out[name] = 4 * elements
    return out, guessed


def check_fits(sizes: dict[str, int], sample: SampleShapes, budget: int) -> None:
    """Raise BadDataError (exit 2) when one sample cannot be calibrated within `budget` bytes: its
    inputs alone exceed it, or its largest activation does (a run exposes at least one whole tensor)."""
    need = max(sample.nbytes, max(sizes.values(), default=0))
    if need <= budget:
        return
    advice = f"pass --calib-memory {math.ceil(need / MiB)} or more, or smaller samples"
    if sample.nbytes > budget:
        raise BadDataError(
            f"{sample.label}: one sample's inputs take {_mib(sample.nbytes)} ({sample.detail}), more than "
            f"the {_mib(budget)} calibration memory budget; {advice}"
        )
    name = max(sizes, key=sizes.__getitem__)
    raise BadDataError(
        f"{sample.label}: tensor '{name}' would take {_mib(sizes[name])} for this sample (estimated from "
        f"the model's shapes), more than the {_mib(budget)} calibration memory budget, and calibration "
        f"must hold at least one whole tensor per run; {advice}"
    )


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.2f} GiB" if nbytes >= 2**30 else f"{nbytes / MiB:,.1f} MiB"


def _dims(vi: onnx.ValueInfoProto):  # noqa: ANN202
    return vi.type.tensor_type.shape.dim


def _inferred_dims(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, list[int | None]]:
    """Each tensor's dimensions (None where unknown) with the inputs fixed to `input_shapes`: the
    model's declared shapes with the inputs' symbols bound, refined by shape inference on the
    skeleton with those inputs."""
    bound: dict[str, int] = {}
    for vi in model.graph.input:
        shape = input_shapes.get(vi.name)
        if shape is not None and len(_dims(vi)) == len(shape):
            bound.update((d.dim_param, s) for d, s in zip(_dims(vi), shape, strict=True) if d.dim_param)
    found = {
        vi.name: [_size(d) or bound.get(d.dim_param) for d in _dims(vi)]
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output)
        if vi.type.tensor_type.HasField("shape")
    }
    for name, dims in _concrete_inference(model, input_shapes).items():
        old = found.get(name)
        if old is not None and len(old) == len(dims):
            dims = [new or was for new, was in zip(dims, old, strict=True)]
        found[name] = dims
    return found


def _concrete_inference(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> dict[str, list[int | None]]:
    """Shape inference on the weightless skeleton with the inputs fixed to `input_shapes` ({} when
    no input could be fixed or inference fails: the declared shapes stand)."""
    light = skeleton(model)
    fixed = False
    for vi in light.graph.input:
        shape = input_shapes.get(vi.name)
        if shape is None or not vi.type.tensor_type.HasField("shape") or len(_dims(vi)) != len(shape):
            continue
        for d, size in zip(_dims(vi), shape, strict=True):
            d.Clear()
            d.dim_value = size
        fixed = True
    if not fixed:
        return {}
    del light.graph.value_info[:]
    try:
        light = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return {}
    return {
        vi.name: [_size(d) for d in _dims(vi)]
        for vi in (*light.graph.value_info, *light.graph.output)
        if vi.type.tensor_type.HasField("shape")
    }


def _size(d: onnx.TensorShapeProto.Dimension) -> int | None:
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
