"""Calibration's sessions: the model with a group of its tensors exposed as extra graph outputs.

A model that onnxruntime is given as bytes (up to `runtime.SPILL_BYTES`) is serialised for each
session, as `exposing_session` does. A bigger one has its weights written once, as external data,
into a private temporary directory, and each session then writes only the graph, with that
session's outputs, beside them: the weights are not serialised, written and synced again for every
group of tensors and every size probe (all-MiniLM-L6-v2, 90 MB: 8 sessions, about 1 s each before).
The sessions are the same graphs with the same weights, so they compute the same values.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

from quantcli.model_io import model_size, staged_model

SessionFor = Callable[[list[str]], object]  # tensor names -> an onnxruntime session exposing them


@contextlib.contextmanager
def exposing_sessions(model: onnx.ModelProto, *, spill_bytes: int | None = None) -> Iterator[SessionFor]:
    """A function building lean sessions of `model` that expose the tensors it is given; the weights
    go to a file once when the model is over `spill_bytes` (default: where make_session spills). The
    files are removed on the way out (the sessions no longer need them once built)."""
    from quantcli.runtime import SPILL_BYTES, exposing_session, make_session

    if model_size(model) <= (SPILL_BYTES if spill_bytes is None else spill_bytes):
        yield lambda names: exposing_session(model, names)
        return
    with (
        tempfile.TemporaryDirectory(prefix="quantcli-") as tmp,
        staged_model(model, Path(tmp) / "model.onnx", external=True) as staged,
    ):
        graph = onnx.load(str(staged.path), load_external_data=False)  # external weights: small
        outputs = len(graph.graph.output)
        existing = {o.name for o in graph.graph.output}
        built = 0

        def session_for(names: list[str]):  # noqa: ANN202 - an onnxruntime session
            nonlocal built
            built += 1
            path = staged.path.with_name(f"exposing-{built}.onnx")  # beside the external data
            try:
                graph.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
                path.write_bytes(graph.SerializeToString(deterministic=True))
            finally:
                del graph.graph.output[outputs:]
            try:
                return make_session(path, lean=True)
            finally:
                path.unlink()

        yield session_for
