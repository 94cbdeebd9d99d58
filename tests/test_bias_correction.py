"""Bias correction: the shift it subtracts is what INT8 weights add to a real onnxruntime output, and
static conversion is more accurate with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, SAMPLES, quantcli, sha256
from onnx import TensorProto, helper, numpy_helper

from quantcli.quantize.bias_correction import dequantized, output_shift
from quantcli.quantize.plan import TensorParams


def _run(
    node: onnx.NodeProto, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray], out_rank: int
) -> np.ndarray:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [None] * out_rank)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)[0]


@pytest.mark.parametrize(
    "groups, in_ch, out_ch", [(1, 3, 4), (2, 4, 6), (8, 8, 8)]
)  # dense, grouped, depthwise
def test_conv_shift_is_what_int8_weights_add(groups: int, in_ch: int, out_ch: int) -> None:
    rng = np.random.default_rng(groups)
    w = rng.standard_normal((out_ch, in_ch // groups, 3, 3)).astype(np.float32)
    params = TensorParams.for_weight(w, 0)
    wq = dequantized(w, params).astype(np.float32)
    # An input that is constant per channel: its mean is exact, and no padding is read.
    mean = rng.uniform(-2, 3, in_ch).astype(np.float32)
    x = np.broadcast_to(mean[None, :, None, None], (1, in_ch, 6, 6)).copy()
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups)
    delta = _run(node, {"x": x}, {"w": wq}, 4) - _run(node, {"x": x}, {"w": w}, 4)
    shift = output_shift(node, w, params, mean)
    assert shift is not None and shift.shape == (out_ch,)
    np.testing.assert_allclose(delta.mean(axis=(0, 2, 3)), shift, rtol=1e-3, atol=1e-5)
    assert np.abs(shift).max() > 1e-3  # the test would pass with a zero shift otherwise


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_shift_follows_alpha_beta_and_trans_b(trans_b: int) -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 7) if trans_b else (7, 5)).astype(np.float32)
    params = TensorParams.for_weight(w, 0 if trans_b else 1)
    x = rng.standard_normal((64, 7)).astype(np.float32) + 1.5
    c = np.zeros(5, np.float32)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=0.5, beta=2.0)
    wq = dequantized(w, params).astype(np.float32)
    delta = _run(node, {"x": x}, {"w": wq, "c": c}, 2) - _run(node, {"x": x}, {"w": w, "c": c}, 2)
    shift = output_shift(node, w, params, x.mean(axis=0))
    # The correction is in the bias's units: beta * shift is what the output moves by.
    np.testing.assert_allclose(2.0 * shift, delta.mean(axis=0), rtol=1e-3, atol=1e-6)


def _convert(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}{'-'.join(extra)}.onnx"
    run = quantcli(
        "convert",
        SAMPLES / f"{name}.onnx",
        "--calib",
        DATA / name / "calib",
        "--eval",
        DATA / name / "eval",
        "-o",
        out,
        "--json",
        "--no-speed-plan",
        *extra,
        cwd=tmp_path,
    )  # fmt: skip: every bias INT32, the head Gemm's included
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_static_is_more_accurate_with_bias_correction(tmp_path: Path) -> None:
    on = _convert(tmp_path, "digits_cnn")
    off = _convert(tmp_path, "digits_cnn", "--no-bias-correction")
    assert on["bias_corrected"] == 5 and off["bias_corrected"] == 0  # 3 Conv + 2 Gemm biases
    sqnr_on = on["accuracy"]["outputs"][0]["sqnr_db"]
    sqnr_off = off["accuracy"]["outputs"][0]["sqnr_db"]
    # Measured 47.9 vs 46.7 dB (EfficientNet-Lite0: 23.9 vs 18.2 dB, README).
    assert sqnr_on > sqnr_off + 0.8, (sqnr_on, sqnr_off)
    assert on["accuracy"]["candidate_accuracy"] >= off["accuracy"]["candidate_accuracy"]


def test_plan_carries_the_correction(tmp_path: Path) -> None:
    model, calib = SAMPLES / "digits_cnn.onnx", DATA / "digits_cnn" / "calib"
    plan, first, again = tmp_path / "plan.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    run = quantcli(
        "convert", model, "--calib", calib, "--save-plan", plan, "-o", first, "--no-speed-plan", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    data = json.loads(plan.read_text())
    corrected = {k: v["correction"] for k, v in data["tensors"].items() if v.get("correction")}
    assert len(corrected) == 5 and all(
        v["role"] == "bias" for k, v in data["tensors"].items() if k in corrected
    )
    assert data["config"]["bias_correction"] is True
    # Replayed without calibration, the corrections come from the plan: the same bytes.
    run = quantcli("convert", model, "--plan", plan, "-o", again, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sha256(first) == sha256(again)
    # A hand-edited correction of the wrong length is a one-line plan error, nothing written.
    name = next(iter(corrected))
    data["tensors"][name]["correction"] = corrected[name][:-1]
    plan.write_text(json.dumps(data))
    bad = tmp_path / "c.onnx"
    run = quantcli("convert", model, "--plan", plan, "-o", bad, cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "correction values" in run.stderr and not bad.exists()
