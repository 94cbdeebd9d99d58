"""Mixed mode: static INT8 with the named or most INT8-sensitive nodes in FP16, on the sample models."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, SAMPLE_NAMES, SAMPLES, convert_sample, optimized_op_counts, quantcli, sha256

from quantcli.api import ConvertOptions, ConvertResult, convert
from quantcli.quantize.plan import FP16, INT8

# SQNR (dB) of the logits vs FP32 on the 300 eval samples, 64 calibration samples, measured with the
# default --fp16-count 1 (static in brackets): digits_cnn 45.72 (44.88), digits_vit 41.64 (40.36),
# digits_mlp 53.83 (51.70).
MIN_SQNR_DB = {"digits_cnn": 45.4, "digits_vit": 41.3, "digits_mlp": 53.4}


@cache
def mixed(name: str, out_dir: str, **kwargs) -> tuple[Path, Path, ConvertResult]:  # noqa: ANN003
    tag = "mixed_" + "_".join(f"{k}-{v}" for k, v in sorted(kwargs.items())).replace("/", "").replace("*", "")
    kwargs.setdefault("speed_plan", False)  # beside `converted`, which quantizes every node it can
    c = convert_sample(name, Path(out_dir), tag, mode="mixed", **kwargs)
    return c.output, c.plan, c.result


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("mixed"))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_mixed_is_valid_and_more_accurate_than_static(name: str, out_dir: str, converted) -> None:  # noqa: ANN001
    output, _, result = mixed(name, out_dir)
    onnx.checker.check_model(onnx.load(output), full_check=True)
    fp16 = [n for n in result.nodes if n.precision == FP16]
    assert len(fp16) == 1 and "raises the outputs' SQNR on the calibration samples" in fp16[0].reason
    assert sum(n.precision == INT8 for n in result.nodes) > 0
    got, static = result.agreement.outputs[0], converted[name].result.agreement.outputs[0]
    assert got.sqnr_db >= MIN_SQNR_DB[name]
    assert got.sqnr_db > static.sqnr_db + 0.5  # the FP16 node was worth it
    assert got.top1_agreement == 1.0
    assert result.size_ratio < 0.5


def test_fp16_node_stays_float_in_onnxruntime(out_dir: str, converted, tmp_path) -> None:  # noqa: ANN001
    """onnxruntime's WeightBiasQuantization quantizes a float Conv that reads a DequantizeLinear
    output; the FP16 node's Cast must keep it out, and every INT8 Conv must still fuse."""
    output, _, result = mixed("digits_cnn", out_dir)
    chosen = next(n for n in result.nodes if n.precision == FP16)
    assert chosen.op_type == "Conv"
    ops, optimized = optimized_op_counts(output, tmp_path)
    static_ops, _ = optimized_op_counts(converted["digits_cnn"].output, tmp_path)
    assert ops["QLinearConv"] == static_ops["QLinearConv"] - 1
    assert ops["Conv"] == 1
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    cast = next(n for n in optimized.graph.node if conv.input[1] in n.output)
    assert cast.op_type == "Cast"  # float16 weights cast at run time, not int8 per tensor
    stored = next(t for t in optimized.graph.initializer if t.name == cast.input[0])
    assert stored.data_type == onnx.TensorProto.FLOAT16


def test_named_nodes_by_pattern(out_dir: str) -> None:
    output, _, result = mixed("digits_cnn", out_dir, fp16_nodes=("/head/*Gemm",), fp16_count=0)
    by_name = {n.name: n for n in result.nodes}
    assert {n.name for n in result.nodes if n.precision == FP16} == {"/head/head.1/Gemm", "/head/head.3/Gemm"}
    assert by_name["/head/head.1/Gemm"].reason.startswith("FP16: named by --fp16-nodes")
    assert by_name["/block1/block1.0/Conv"].precision == INT8
    out = onnx.load(output)
    onnx.checker.check_model(out, full_check=True)
    f16 = {t.name for t in out.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert {"head.1.weight", "head.3.weight"} <= {n.removesuffix("_fp16") for n in f16}
    assert result.agreement.outputs[0].top1_agreement == 1.0


def test_plan_replay_is_byte_identical(out_dir: str, tmp_path) -> None:  # noqa: ANN001
    output, plan, _ = mixed("digits_vit", out_dir)
    replay = convert(
        ConvertOptions(model=SAMPLES / "digits_vit.onnx", output=tmp_path / "replay.onnx", plan=plan)
    )
    assert replay.mode == "mixed"
    assert sha256(tmp_path / "replay.onnx") == sha256(output)
    saved = json.loads(plan.read_text())
    assert sum(n["precision"] == "fp16" for n in saved["nodes"]) == 1


def test_fp16_node_on_overflowing_activation_stays_float32(tmp_path) -> None:  # noqa: ANN001
    from onnx import TensorProto, helper, numpy_helper

    from quantcli.calibration.collect import Ranges
    from quantcli.preprocess import preprocess
    from quantcli.quantize.mixed import plan_mixed
    from quantcli.quantize.plan import FLOAT, QuantConfig

    w = np.eye(4, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="big"),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="small"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).model
    ranges = Ranges({"x": (-1.0, 1.0), "h": (-1e5, 1e5), "y": (-1.0, 1.0)}, 8)
    plan = plan_mixed(model, ranges, QuantConfig(), named=["big", "small"], sensitivity={}, count=0)
    by_name = {n.name: n for n in plan.nodes}
    assert by_name["big"].precision == FLOAT
    assert "h reaches 100000, beyond float16's 65504" in by_name["big"].reason
    assert by_name["small"].precision == FLOAT  # reads h too
    # h left unobserved by a static calibration (static.tensors_to_observe): not taken as in range,
    # but asked for, so that the caller observes it and plans again
    partial = Ranges({"x": (-1.0, 1.0), "y": (-1.0, 1.0)}, 8, unobserved=frozenset({"h"}))
    plan = plan_mixed(model, partial, QuantConfig(), named=["big"], sensitivity={}, count=0)
    assert {n.name: n for n in plan.nodes}["big"].precision == FLOAT and partial.wanted == {"h"}


def test_cli_errors(tmp_path) -> None:  # noqa: ANN001
    model = SAMPLES / "digits_cnn.onnx"
    calib = DATA / "digits_cnn" / "calib"
    run = quantcli(
        "convert",
        model,
        "--mode",
        "mixed",
        "--calib",
        calib,
        "--fp16-nodes",
        "/nope/*",
        "-o",
        tmp_path / "o.onnx",
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "quantcli convert: error: --fp16-nodes /nope/*: matches no node of the model"
    run = quantcli(
        "convert",
        model,
        "--mode",
        "static",
        "--calib",
        calib,
        "--fp16-nodes",
        "x",
        "-o",
        tmp_path / "o.onnx",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "--fp16-nodes applies to --mode mixed only" in run.stderr
    run = quantcli("convert", model, "--mode", "mixed", "-o", tmp_path / "o.onnx", cwd=tmp_path)
    assert run.returncode == 2 and "--mode mixed needs calibration data" in run.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_cli_json_reports_fp16_nodes(tmp_path) -> None:  # noqa: ANN001
    run = quantcli(
        "convert", SAMPLES / "digits_mlp.onnx", "--mode", "mixed", "--calib", DATA / "digits_mlp" / "calib",
        "--fp16-count", "2", "--json", "-o", tmp_path / "o.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["mode"] == "mixed"
    # At most the 2 asked for: a node whose FP16 form does not raise the outputs' SQNR is not taken.
    fp16 = [n for n in report["nodes"] if n["precision"] == "fp16"]
    assert 1 <= report["nodes_by_precision"]["fp16"] == len(fp16) <= 2
    assert all("raises the outputs' SQNR" in n["reason"] for n in fp16)
    sess = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(sorted((DATA / "digits_mlp" / "eval").glob("*.npz"))[0])["input"]
    assert np.isfinite(sess.run(None, {"input": x})[0]).all()
