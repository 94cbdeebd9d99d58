"""The float reference's outputs on the evaluation samples are recorded on a thread of their own
while planning and the rewrite go on (verify.ReferenceRecording): the same figures as recorded at
verification, and nothing left running when a conversion ends early."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import convert_sample, threads_calling

from quantcli import api
from quantcli.errors import InternalError
from quantcli.quantize import modes


def recording_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("quantcli-reference")]


def test_the_reference_recorded_alongside_gives_the_same_agreement(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import quantcli.verify as verify

    where = threads_calling(monkeypatch, verify, "recorded_reference")
    alongside = convert_sample("digits_cnn", tmp_path, "alongside")
    monkeypatch.setattr(api, "OVERLAP_BYTES", 0)  # every model: recorded at verification
    in_turn = convert_sample("digits_cnn", tmp_path, "in_turn")
    assert where[0].startswith("quantcli-reference") and where[1] == threading.main_thread().name
    assert alongside.output.read_bytes() == in_turn.output.read_bytes()
    assert alongside.result.agreement == in_turn.result.agreement
    assert alongside.result.agreement.samples > 0


def test_a_conversion_that_fails_stops_the_recording(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that fails (here: made to) ends the conversion; the recording started after
    calibration stops at its next sample instead of running on through the 300 samples."""
    import quantcli.verify as verify

    runs: list[int] = []
    run = verify.run_session

    def slow(session, names, feeds, which, index):  # noqa: ANN001, ANN202
        runs.append(index)
        time.sleep(0.005)  # 300 samples: 1.5 s at least
        return run(session, names, feeds, which, index)

    def failing(model, plan):  # noqa: ANN001, ANN202
        time.sleep(0.05)  # the recording is under way
        raise InternalError("a rewrite that fails")

    monkeypatch.setattr(verify, "run_session", slow)
    monkeypatch.setitem(modes._REGISTRY, "static", modes.replace(modes.get("static"), rewrite=failing))
    with pytest.raises(InternalError, match="a rewrite that fails"):
        convert_sample("digits_cnn", tmp_path, "failed")
    for thread in recording_threads():
        thread.join(timeout=10)
    assert not recording_threads()
    assert 0 < len(runs) < 100
