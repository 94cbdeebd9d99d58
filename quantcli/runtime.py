"""onnxruntime sessions, for every stage that runs a model: calibration, verification, compare,
per-layer errors and the fallback search. A load failure is exit 3 (UnsupportedModelError)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from quantcli.errors import UnsupportedModelError
from quantcli.model_io import LARGE_MODEL_BYTES, model_size, serialize_model, staged_model


def release_freed_memory() -> None:
    """Free what a finished stage left behind and hand it back to the operating system: objects
    held only by reference cycles (measured on a 512 MiB model: the float model's 750 MB stayed
    alive until the cyclic collector ran, through verification), and the blocks glibc keeps for
    reuse (freed blocks of up to its dynamic mmap threshold, 32 MB). The next stage's sessions
    then add to what is really in use. The return to the OS is skipped where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def make_session(
    model: onnx.ModelProto | bytes | Path, *, threads: int = 0, optimize: bool = True, lean: bool = False
):  # noqa: ANN201
    """An onnxruntime CPU session over a model, its serialised bytes or its path; a load failure is exit 3.

    Sessions that verify a result run as a deployment would (same kernels, same numerics). `lean`
    sessions (calibration) trade speed for memory: no pre-packed second copy of the weights and no
    arena holding on to every intermediate buffer of the widest run; their threads do not spin
    between runs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if lean:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
        # Its threads sleep between runs instead of spinning: calibration's observers work between
        # runs, on the same cores (EfficientNet-Lite0, 64 samples: 20% less CPU time, same values).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(model, onnx.ModelProto) and model_size(model) > SPILL_BYTES:
        # A big model goes through a private temporary file (its weights as external data above
        # 2 GB), so that no serialised copy is held while onnxruntime builds its own.
        with (
            tempfile.TemporaryDirectory(prefix="quantcli-") as tmp,
            staged_model(model, Path(tmp) / "model.onnx") as staged,
        ):
            return _session(ort, str(staged.path), opts)
    source = serialize_model(model) if isinstance(model, onnx.ModelProto) else model
    return _session(ort, str(source) if isinstance(source, Path) else source, opts)


SPILL_BYTES = LARGE_MODEL_BYTES


def _session(ort, source: str | bytes, opts):  # noqa: ANN001, ANN202
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"onnxruntime cannot load the model: {first}") from exc


def exposing_session(model: onnx.ModelProto, names: list[str], *, optimize: bool = True, lean: bool = True):  # noqa: ANN201
    """A session with `names` as extra graph outputs. They are added just long enough to build the
    session and the model is restored after, so no second copy of its weights is made."""
    n_outputs = len(model.graph.output)
    existing = {o.name for o in model.graph.output}
    try:
        for name in names:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        return make_session(model, optimize=optimize, lean=lean)
    finally:
        del model.graph.output[n_outputs:]
