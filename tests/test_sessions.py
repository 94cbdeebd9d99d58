"""Calibration sessions over weights written once compute what sessions over the whole model do."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import DATA, SAMPLES

from quantcli.calibration.collect import float_tensors
from quantcli.calibration.data import InputSpec, iter_samples, list_samples
from quantcli.calibration.sessions import exposing_sessions
from quantcli.preprocess import preprocess
from quantcli.runtime import exposing_session


def test_spilled_sessions_match_inline_ones_and_leave_the_model_as_it_was() -> None:
    model = preprocess(onnx.load(SAMPLES / "digits_vit.onnx")).model
    before = model.SerializeToString(deterministic=True)
    names = float_tensors(model)
    specs = InputSpec.from_model(model)
    feeds = next(iter_samples(list_samples(DATA / "digits_vit" / "calib")[:1], specs))
    groups = [names, names[: len(names) // 2], names[len(names) // 2 :]]
    with exposing_sessions(model, spill_bytes=0) as expose:  # every model spills
        spilled = [expose(group) for group in groups]
    assert model.SerializeToString(deterministic=True) == before
    for group, session in zip(groups, spilled, strict=True):
        inline = exposing_session(model, group)
        out = [o.name for o in inline.get_outputs()]
        assert [o.name for o in session.get_outputs()] == out
        for a, b in zip(inline.run(out, feeds), session.run(out, feeds), strict=True):
            np.testing.assert_array_equal(a, b)
