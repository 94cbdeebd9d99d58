"""Run the float model in onnxruntime, one sample at a time, and observe activation ranges."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from quantcli.calibration.observers import MinMaxObserver
from quantcli.errors import UnsupportedModelError
from quantcli.model_io import serialize_model


@dataclass
class Ranges:
    """Observed float range per tensor name, and how many samples produced them."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: int = 0
    method: str = "minmax"


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs that are (or may be) float32: the candidates to observe."""
    known = {
        v.name: v.type.tensor_type.elem_type
        for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)
    }
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in names if known.get(n, onnx.TensorProto.FLOAT) in (onnx.TensorProto.FLOAT, 0)]


def make_session(model: onnx.ModelProto | bytes | Path, *, threads: int = 0, optimize: bool = True):  # noqa: ANN201
    """An onnxruntime CPU session over a model, its serialised bytes or its path; a load failure is exit 3."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    # Pre-packed weights are a second copy of every MatMul/Conv weight; calibration and
    # verification run few samples, so the memory matters more than the speed.
    opts.add_session_config_entry("session.disable_prepacking", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto) and model.ByteSize() > _SPILL_BYTES:
        # A big model goes through a private temporary file, so that its serialised bytes are
        # freed before onnxruntime builds its own copy of the weights.
        with tempfile.TemporaryDirectory(prefix="quantcli-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(serialize_model(model))
            return _session(ort, str(path), opts)
    source = serialize_model(model) if isinstance(model, onnx.ModelProto) else model
    return _session(ort, str(source) if isinstance(source, Path) else source, opts)


_SPILL_BYTES = 64 * 2**20


def _session(ort, source: str | bytes, opts):  # noqa: ANN001, ANN202
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"onnxruntime cannot load the model: {first}") from exc


def collect_ranges(
    model: onnx.ModelProto,
    samples: Iterable[dict[str, np.ndarray]],
    *,
    progress: Callable[[int], None] | None = None,
) -> Ranges:
    """Stream samples through the model with every float tensor exposed; keep only min/max."""
    names = float_tensors(model)
    # Expose every candidate as a graph output just long enough to build the session; the model
    # is restored after, so no second copy of its weights is made.
    n_outputs = len(model.graph.output)
    existing = {o.name for o in model.graph.output}
    try:
        for name in names:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        session = make_session(model)
    finally:
        del model.graph.output[n_outputs:]
    out_names = [o.name for o in session.get_outputs()]
    observers = {n: MinMaxObserver() for n in names}
    count = 0
    for feeds in samples:
        try:
            values = session.run(out_names, feeds)
        except Exception as exc:  # noqa: BLE001
            raise UnsupportedModelError(
                f"onnxruntime failed running a calibration sample: {str(exc).splitlines()[0]}"
            ) from exc
        for name, value in zip(out_names, values, strict=True):
            obs = observers.get(name)
            if obs is not None and isinstance(value, np.ndarray) and value.dtype == np.float32:
                obs.update(value)
        count += 1
        if progress is not None:
            progress(count)
    return Ranges({n: o.range() for n, o in observers.items() if o.count}, count)
