"""Modes that need no calibration (dynamic, weights-int8, fp16) on every sample model."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, SAMPLE_NAMES, SAMPLES, optimized_op_counts
from onnx import TensorProto

from quantcli.api import ConvertOptions, convert

MODES = ("dynamic", "weights-int8", "fp16", "bf16")
CASES = list(itertools.product(SAMPLE_NAMES, MODES))

# Size ratio bounds: weight-only INT8 everywhere; dynamic only shrinks MatMul/Gemm weights, which are
# most of the ViT and the MLP but not of the CNN (its Conv weights stay float in dynamic mode).
MAX_SIZE = {
    ("digits_cnn", "dynamic"): 0.50,
    ("digits_vit", "dynamic"): 0.30,
    ("digits_mlp", "dynamic"): 0.30,
    **{(n, "weights-int8"): 0.30 for n in SAMPLE_NAMES},
    **{(n, "fp16"): 0.55 for n in SAMPLE_NAMES},
    **{(n, "bf16"): 0.55 for n in SAMPLE_NAMES},
}
MIN_COSINE = {"dynamic": 0.999, "weights-int8": 0.9995, "fp16": 0.9999, "bf16": 0.9999}


@pytest.mark.parametrize("name, mode", CASES)
def test_output_is_valid_runs_and_is_small(converted_modes, name: str, mode: str) -> None:
    c = converted_modes(name, mode)
    model = onnx.load(c.output)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(c.output), providers=["CPUExecutionProvider"])
    x = np.load(sorted((DATA / name / "eval").glob("*.npz"))[0])["input"]
    (logits,) = sess.run(None, {"input": x})
    assert logits.shape == (1, 10) and logits.dtype == np.float32
    assert c.output.stat().st_size / c.source.stat().st_size <= MAX_SIZE[(name, mode)]


@pytest.mark.parametrize("name, mode", CASES)
def test_accuracy(converted_modes, name: str, mode: str) -> None:
    a = converted_modes(name, mode).result.agreement
    assert a.samples == 300
    assert a.outputs[0].cosine_mean >= MIN_COSINE[mode]
    assert a.outputs[0].top1_agreement >= 0.99
    assert a.reference_accuracy - a.candidate_accuracy <= 0.01


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_dynamic_runs_integer_kernels_and_keeps_conv_float(converted_modes, name: str, tmp_path) -> None:
    c = converted_modes(name, "dynamic")
    planned = [n for n in c.result.nodes if n.precision == "int8"]
    assert planned and {n.op_type for n in planned} <= {"MatMul", "Gemm"}
    counts, _ = optimized_op_counts(c.output, tmp_path)
    assert counts["DynamicQuantizeMatMul"] + counts["MatMulIntegerToFloat"] == len(planned), dict(counts)
    assert counts["MatMulInteger"] == 0 and counts["ConvInteger"] == 0
    convs = [n for n in c.result.nodes if n.op_type == "Conv"]
    assert all(n.precision == "float" and "ConvInteger is slow" in n.reason for n in convs)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_weights_int8_stores_int8_weights_behind_dequantize(converted_modes, name: str) -> None:
    c = converted_modes(name, "weights-int8")
    model = onnx.load(c.output)
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    planned = [n for n in c.result.nodes if n.precision == "int8"]
    source = onnx.load(c.source)
    weights = {t.name for t in source.graph.initializer}
    with_weight = [
        n for n in source.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in weights
    ]
    assert len(planned) == len(with_weight) > 0  # every weight-bearing node, nothing else
    for plan_node in planned:
        node = next(n for n in model.graph.node if n.name == plan_node.name)
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert inits[dq.input[0]].data_type == TensorProto.INT8
    # Activations are not quantized at all.
    assert not any(n.op_type == "QuantizeLinear" for n in model.graph.node)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_fp16_stores_float16_weights(converted_modes, name: str) -> None:
    c = converted_modes(name, "fp16")
    model = onnx.load(c.output)
    big_float32 = [
        t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 16
    ]
    assert big_float32 == []
    assert sum(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) > 0
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]


@pytest.mark.parametrize("name, mode", CASES)
def test_plan_replay_is_byte_identical(converted_modes, name: str, mode: str, tmp_path) -> None:
    c = converted_modes(name, mode)
    replay = tmp_path / "replay.onnx"
    result = convert(ConvertOptions(model=c.source, output=replay, plan=c.plan))
    assert result.mode == mode and result.plan_replayed
    assert replay.read_bytes() == c.output.read_bytes()


def test_dynamic_conv_on_request(tmp_path) -> None:
    out = tmp_path / "cnn_dynamic_conv.onnx"
    result = convert(
        ConvertOptions(
            model=SAMPLES / "digits_cnn.onnx",
            output=out,
            mode="dynamic",
            dynamic_op_types=("MatMul", "Gemm", "Conv"),
            eval=DATA / "digits_cnn" / "eval",
        )
    )
    assert result.compute_counts() == {"quantized": 5, "float": 0, "total": 5}
    onnx.checker.check_model(onnx.load(out), full_check=True)
    counts, _ = optimized_op_counts(out, tmp_path)
    assert counts["ConvInteger"] == 3 and counts["Conv"] == 0
    assert result.agreement.outputs[0].cosine_mean >= 0.9995
    assert result.agreement.reference_accuracy - result.agreement.candidate_accuracy <= 0.01


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_bf16_stores_bfloat16_weights_behind_casts(converted_modes, name: str) -> None:
    c = converted_modes(name, "bf16")
    model = onnx.load(c.output)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    assert not [t.name for t in inits.values() if t.data_type == TensorProto.FLOAT and np.prod(t.dims) > 8]
    weights = [
        n.input[1]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in producers
    ]
    for w in weights:
        cast = producers[w]
        if cast.op_type == "Cast":
            assert inits[cast.input[0]].data_type == TensorProto.BFLOAT16
    assert (
        c.result.stored_weight_nodes()
        == len([n for n in c.result.nodes if n.op_type in ("Conv", "Gemm", "MatMul") and n.quantized_inputs])
        > 0
    )


# A weight W that a MatMul reads and that is also used elsewhere: read inside a Loop body, a Scan
# body or an If branch, a graph output, a graph input with a default (IR >= 4), or an IR 3 model's
# initializer listed as an input. Issue #17: dynamic mode deleted W (exit 3, "a quantcli bug") or
# turned the overridable input into a required one.
USE_CASES = ("loop_body", "scan_body", "if_branch", "graph_output", "graph_input", "ir3")
EVERY_MODE = ("dynamic", "weights-int8", "weights-int4", "fp16", "bf16", "static", "mixed")
_D = 32


def weight_used_elsewhere(case: str) -> onnx.ModelProto:
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(3)
    F = TensorProto.FLOAT
    w = numpy_helper.from_array((rng.normal(size=(_D, _D)) * 0.2).astype(np.float32), "W")
    inits = [w, numpy_helper.from_array(np.array(2, np.int64), "trip")]
    inputs = [helper.make_tensor_value_info("x", F, [2, _D])]
    outputs = [helper.make_tensor_value_info("y", F, [2, _D])]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm")]
    if case == "loop_body":
        body = helper.make_graph(
            [
                helper.make_node("MatMul", ["v", "W"], ["v_out"]),
                helper.make_node("Identity", ["c"], ["c_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v", F, [2, _D]),
            ],
            [
                helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_out", F, [2, _D]),
            ],
        )
        nodes.append(helper.make_node("Loop", ["trip", "", "h"], ["y"], name="loop", body=body))
    elif case == "scan_body":
        body = helper.make_graph(
            [helper.make_node("MatMul", ["row", "W"], ["r"]), helper.make_node("Add", ["s", "r"], ["s_out"])],
            "body",
            [helper.make_tensor_value_info("s", F, [_D]), helper.make_tensor_value_info("row", F, [_D])],
            [helper.make_tensor_value_info("s_out", F, [_D])],
        )
        inits.append(numpy_helper.from_array(np.zeros(_D, np.float32), "s0"))
        nodes.append(
            helper.make_node("Scan", ["s0", "h"], ["s_end"], name="scan", num_scan_inputs=1, body=body)
        )
        nodes.append(helper.make_node("Add", ["h", "s_end"], ["y"], name="add"))
    elif case == "if_branch":
        then = helper.make_graph(
            [helper.make_node("MatMul", ["h", "W"], ["t"])],
            "then",
            [],
            [helper.make_tensor_value_info("t", F, [2, _D])],
        )
        orelse = helper.make_graph(
            [helper.make_node("Neg", ["h"], ["e"])],
            "else",
            [],
            [helper.make_tensor_value_info("e", F, [2, _D])],
        )
        inits.append(numpy_helper.from_array(np.array(-1e4, np.float32), "low"))
        nodes += [
            helper.make_node("ReduceMean", ["h"], ["m"], name="mean", keepdims=0),
            helper.make_node("Greater", ["m", "low"], ["cond"], name="greater"),
            helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=orelse),
        ]
    else:
        nodes.append(helper.make_node("Relu", ["h"], ["y"], name="relu"))
        if case == "graph_output":
            outputs.append(helper.make_tensor_value_info("W", F, [_D, _D]))
        elif case == "graph_input":
            inputs.append(helper.make_tensor_value_info("W", F, [_D, _D]))
        else:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    model = helper.make_model(
        helper.make_graph(nodes, case, inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 3 if case == "ir3" else 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("case, mode", list(itertools.product(USE_CASES, EVERY_MODE)))
def test_weight_used_elsewhere_survives(tmp_path, case: str, mode: str) -> None:
    model = weight_used_elsewhere(case)
    source, out = tmp_path / f"{case}.onnx", tmp_path / f"{case}_{mode}.onnx"
    onnx.save(model, source)
    calib = {}
    if mode in ("static", "mixed"):
        calib = {"calib": tmp_path / "calib", "speed_plan": False}  # its 2x32 MatMul: INT8 all the same
        calib["calib"].mkdir()
        for k in range(8):
            x = np.random.default_rng(k).normal(size=(2, _D)).astype(np.float32)
            np.savez(calib["calib"] / f"{k}.npz", x=x)
    result = convert(ConvertOptions(model=source, output=out, mode=mode, **calib))
    onnx.checker.check_model(onnx.load(out), full_check=True)
    reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    candidate = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in candidate.get_inputs()] == ["x"]  # no new required input
    x = np.random.default_rng(0).normal(size=(2, _D)).astype(np.float32)
    feeds = [{"x": x}]
    if case == "graph_input":  # an overridable default becomes a constant, and convert says so
        assert any("initializers listed as graph inputs" in w for w in result.warnings)
    tolerance = {"weights-int4": 0.2, "static": 0.1, "mixed": 0.1}.get(mode, 0.05)
    for feed in feeds:
        for got, want in zip(candidate.run(None, feed), reference.run(None, feed), strict=True):
            assert np.linalg.norm(got - want) <= tolerance * np.linalg.norm(want)
    if case == "graph_output":  # the output is the weight itself, exact
        np.testing.assert_array_equal(candidate.run(None, feeds[0])[1], reference.run(None, feeds[0])[1])
    mm = next(n for n in result.nodes if n.name == "mm")
    stored_only = mode in ("fp16", "bf16")  # storage modes: a graph output keeps float32 storage
    if case == "graph_output" and stored_only:
        assert mm.precision == "float" and f"also a {case.replace('_', ' ')}" in mm.reason
        assert not [n for n in result.nodes if "W" in n.quantized_inputs]
    elif case == "graph_output" and mm.precision == "fp16":  # mixed: read through a Cast, not stored
        assert "W" not in mm.quantized_inputs
    else:  # a weight used elsewhere is still quantized (fp16 stores it; MatMul computes in float32)
        assert "W" in mm.quantized_inputs, mm.reason


def test_dynamic_weight_read_in_a_loop_body_converts_from_the_cli(tmp_path) -> None:
    """Issue #17's report: exit 3, 'this is a quantcli bug'."""
    from conftest import quantcli

    source = tmp_path / "loop.onnx"
    onnx.save(weight_used_elsewhere("loop_body"), source)
    r = quantcli("convert", source, "--mode", "dynamic", "-o", tmp_path / "out.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bug" not in r.stderr
