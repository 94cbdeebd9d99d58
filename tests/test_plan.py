"""Planner and rewriter on tiny graphs: decisions, graph outputs, and what onnxruntime fuses."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import optimized_op_counts
from onnx import TensorProto, helper, numpy_helper

from quantcli.calibration.collect import collect_ranges
from quantcli.errors import BadPlanError
from quantcli.preprocess import preprocess
from quantcli.quantize.params import QType
from quantcli.quantize.plan import QuantConfig, QuantPlan
from quantcli.quantize.qdq import rewrite_qdq
from quantcli.quantize.static import plan_static
from quantcli.runtime import make_session
from quantcli.verify import checker_error

RNG = np.random.default_rng(1)


def conv_relu_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(size=8).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def matmul_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.normal(size=(32, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantize(model: onnx.ModelProto, x: np.ndarray) -> tuple[QuantPlan, onnx.ModelProto]:
    pre = preprocess(model).model
    samples = [{"x": x[i : i + 1]} for i in range(len(x))] if x.ndim == 4 else [{"x": x}]
    ranges = collect_ranges(pre, lambda: samples)
    plan = plan_static(pre, ranges, QuantConfig())
    return plan, rewrite_qdq(pre, plan)


def test_relu_is_absorbed_and_graph_output_keeps_its_name(tmp_path) -> None:
    model = conv_relu_model()
    x = RNG.normal(size=(8, 3, 16, 16)).astype(np.float32)
    plan, q = quantize(model, x)
    assert plan.node("conv").precision == "int8"
    relu = plan.node("relu")
    assert relu.precision == "int8" and "absorbed into conv" in relu.reason
    assert plan.tensors["y"].zero_point == [0]  # Relu output range starts at 0
    assert "c" not in plan.tensors  # no Q/DQ between Conv and Relu
    assert checker_error(q) is None
    assert [o.name for o in q.graph.output] == ["y"]
    onnx.save(q, tmp_path / "q.onnx")
    counts, _ = optimized_op_counts(tmp_path / "q.onnx", tmp_path)
    assert counts["QLinearConv"] == 1 and counts["Relu"] == 0 and counts["Conv"] == 0
    ref = make_session(model).run(None, {"x": x[:1]})[0]
    got = make_session(q).run(None, {"x": x[:1]})[0]
    assert np.abs(ref - got).max() <= 4 * plan.tensors["y"].scale[0] + 0.02 * np.abs(ref).max()


def test_matmul_into_graph_output_returns_float(tmp_path) -> None:
    x = RNG.normal(size=(4, 32)).astype(np.float32)
    plan, q = quantize(matmul_model(), x)
    mm = plan.node("mm")
    assert mm.precision == "int8" and mm.quantized_outputs == []
    assert plan.tensors["w"].axis == 1 and len(plan.tensors["w"].scale) == 16
    onnx.save(q, tmp_path / "q.onnx")
    counts, _ = optimized_op_counts(tmp_path / "q.onnx", tmp_path)
    assert counts["MatMulIntegerToFloat"] == 1 and counts["MatMul"] == 0


def test_int32_bias_of_a_near_zero_channel_does_not_saturate() -> None:
    """A channel with tiny weights and a large bias: at input_scale x weight_scale its bias needs
    more than 31 bits; the weight scale of that channel widens until it fits (EfficientNet-Lite0
    had 83 such biases clipped)."""
    model = conv_relu_model()
    untouched = onnx.ModelProto()
    untouched.CopyFrom(model)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    b = numpy_helper.to_array(model.graph.initializer[1]).copy()
    w[3] = 1e-9
    b[3] = 5.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(b, "b"))
    x = RNG.normal(size=(8, 3, 16, 16)).astype(np.float32)
    plan, q = quantize(model, x)
    # The other channels' scales are what they are without the near-zero channel (per-channel
    # min/max, widened where a weight pair would exceed the int16 limit: quantize/saturation.py).
    base, _ = quantize(untouched, x)
    bias = next(t for t in q.graph.initializer if t.name.startswith("b_quantized"))
    values = numpy_helper.to_array(bias).astype(np.int64)
    assert np.abs(values).max() < 2**31 - 1
    w_scale = plan.tensors["w"].scale
    assert w_scale[3] > 100 * max(w_scale[:3] + w_scale[4:]) * 1e-9  # widened, others untouched
    assert w_scale[:3] + w_scale[4:] == base.tensors["w"].scale[:3] + base.tensors["w"].scale[4:]
    ref = make_session(model).run(None, {"x": x[:1]})[0]
    got = make_session(q).run(None, {"x": x[:1]})[0]
    np.testing.assert_allclose(got[0, 3], ref[0, 3], atol=2 * plan.tensors["y"].scale[0])


def layernorm_branch_model() -> onnx.ModelProto:
    """A transformer's pattern: a float LayerNormalization feeding an INT8 MatMul, a float op
    (Sub: no INT8 rule) and a Shape, as all-MiniLM-L6-v2 has after every LayerNormalization."""
    w = numpy_helper.from_array(RNG.normal(size=(32, 32)).astype(np.float32), "w")
    gamma = numpy_helper.from_array(np.ones(32, np.float32), "gamma")
    beta = numpy_helper.from_array(np.zeros(32, np.float32), "beta")
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "w"], ["m"], name="mm"),
        helper.make_node("Sub", ["m", "ln"], ["d"], name="sub"),
        helper.make_node("Shape", ["ln"], ["s"], name="shape"),
        helper.make_node("Reshape", ["d", "s"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 32])],
        [w, gamma, beta],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_and_shape_readers_of_a_quantized_activation_run_no_dequantize(tmp_path) -> None:
    """Shape reads the quantized tensor; a float node reads the float tensor when its producer is
    float too. Each would otherwise cost a DequantizeLinear that onnxruntime runs for it alone
    (all-MiniLM-L6-v2: 24 of its 30; 0.5 ms of 4.3 at batch 1, and cosine 0.9887 -> 0.9925)."""
    model = layernorm_branch_model()
    x = RNG.normal(size=(2, 8, 32)).astype(np.float32)
    plan, q = quantize(model, x)
    assert plan.node("mm").precision == "int8" and plan.node("sub").precision == "float"
    assert "ln" in plan.tensors  # quantized for the MatMul
    producers = {o: n for n in q.graph.node for o in n.output}
    by_name = {n.name: n for n in q.graph.node}
    assert "ln" in by_name["sub"].input  # the exact float value, not ln dequantized
    assert producers[by_name["shape"].input[0]].op_type == "QuantizeLinear"
    assert checker_error(q) is None
    onnx.save(q, tmp_path / "q.onnx")
    counts, optimized = optimized_op_counts(tmp_path / "q.onnx", tmp_path)
    assert counts["MatMulIntegerToFloat"] == 1 and counts["DequantizeLinear"] == 0, dict(counts)
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def attention_scores_model() -> onnx.ModelProto:
    """Attention's score path: MatMul -> Mul(1/sqrt(d)) -> Softmax -> MatMul."""
    w1 = numpy_helper.from_array(RNG.normal(size=(16, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(RNG.normal(size=(16, 8)).astype(np.float32), "w2")
    c = numpy_helper.from_array(np.array(0.25, np.float32), "c")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "c"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w2"], ["y"], name="out"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8])],
        [w1, w2, c],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_softmax_and_elementwise_nodes_read_only_in_float_stay_float(tmp_path) -> None:
    """No QLinearSoftmax (slower than float Softmax + QuantizeLinear), and the Mul before it, whose
    output only the float Softmax reads, runs in float on the MatMul's float output: no
    QuantizeLinear/DequantizeLinear between them (digits_vit 0.85 -> 0.79 of FP32 at batch 1)."""
    model = attention_scores_model()
    x = RNG.normal(size=(2, 4, 16)).astype(np.float32)
    plan, q = quantize(model, x)
    assert plan.node("scores").precision == "int8" and plan.node("scores").quantized_outputs == []
    assert plan.node("scale").precision == "float" and "only float nodes read" in plan.node("scale").reason
    assert plan.node("softmax").precision == "float" and "QLinearSoftmax" in plan.node("softmax").reason
    assert plan.node("out").precision == "int8" and "p" in plan.tensors
    onnx.save(q, tmp_path / "q.onnx")
    counts, _ = optimized_op_counts(tmp_path / "q.onnx", tmp_path)
    assert counts["QLinearSoftmax"] == counts["QLinearMul"] == counts["DequantizeLinear"] == 0, dict(counts)
    assert counts["MatMulIntegerToFloat"] == 2 and counts["Softmax"] == counts["Mul"] == 1, dict(counts)
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def conv_flatten_gemm_model() -> onnx.ModelProto:
    """A CNN head: Conv -> Relu -> MaxPool -> Flatten -> Gemm (a 2x2x8 feature map)."""
    inits = [
        numpy_helper.from_array(RNG.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.normal(size=8).astype(np.float32), "b"),
        numpy_helper.from_array(RNG.normal(size=(10, 32)).astype(np.float32), "wg"),
        numpy_helper.from_array(RNG.normal(size=10).astype(np.float32), "bg"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_flatten_after_integer_convs_reads_nhwc_order(tmp_path) -> None:
    """onnxruntime runs QLinearConv channels-last and transposes back before a Flatten; quantcli
    writes the Flatten in NHWC order (Transpose before it, Gemm weight permuted), so the two
    Transposes cancel: only the input's Transpose is left (digits_cnn 0.655 -> 0.642 of FP32)."""
    model = conv_flatten_gemm_model()
    x = RNG.normal(size=(8, 3, 4, 4)).astype(np.float32)
    plan, q = quantize(model, x)
    assert "NHWC order" in plan.node("flatten").reason
    transposes = [n for n in q.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and list(transposes[0].attribute[0].ints) == [0, 2, 3, 1]
    onnx.save(q, tmp_path / "q.onnx")
    counts, optimized = optimized_op_counts(tmp_path / "q.onnx", tmp_path, layout=True)
    assert counts["QLinearConv"] == 1 and counts["QGemm"] == 1 and counts["Transpose"] == 1, dict(counts)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    transpose = next(n for n in optimized.graph.node if n.op_type == "Transpose")
    assert producers[transpose.input[0]].op_type == "QuantizeLinear"  # the model input's, not the head's
    ref = make_session(model).run(None, {"x": x})[0]
    got = make_session(q).run(None, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def _flatten_plan() -> tuple[onnx.ModelProto, QuantPlan, onnx.ModelProto]:
    model = preprocess(conv_flatten_gemm_model()).model
    x = RNG.normal(size=(8, 3, 4, 4)).astype(np.float32)
    plan = plan_static(
        model, collect_ranges(model, lambda: [{"x": x[i : i + 1]} for i in range(8)]), QuantConfig()
    )
    return model, plan, rewrite_qdq(model, plan)


def _replayed(model: onnx.ModelProto, data: dict) -> onnx.ModelProto:
    return rewrite_qdq(model, QuantPlan.from_dict(json.loads(json.dumps(data))))


def test_the_plan_states_the_nhwc_flatten_and_the_rewriter_follows_it() -> None:
    """Schema 2: the Flatten's NHWC form is in the plan; without it the rewriter writes the plain
    Flatten (no Transpose, the Gemm weight as it was); a version-1 plan gets the form where the
    rule holds, as its rewriter did."""
    model, plan, q = _flatten_plan()
    data = plan.to_dict()
    flatten = next(n for n in data["nodes"] if n["op_type"] == "Flatten")
    assert data["schema_version"] == 2 and flatten["form"] == "nhwc"
    assert all("form" not in n for n in data["nodes"] if n is not flatten)  # only where there is one
    assert _replayed(model, data).SerializeToString() == q.SerializeToString()

    v1 = json.loads(json.dumps(data))
    v1["schema_version"] = 1
    del next(n for n in v1["nodes"] if n["op_type"] == "Flatten")["form"]
    assert _replayed(model, v1).SerializeToString() == q.SerializeToString()

    # The form taken away by hand: a plain Flatten and the Gemm weight in its own order. (Its
    # parameters, fitted for the NHWC order, then fit less well: a new plan is the way to change it.)
    plain = json.loads(json.dumps(data))
    del next(n for n in plain["nodes"] if n["op_type"] == "Flatten")["form"]
    written = _replayed(model, plain)
    assert not [n for n in written.graph.node if n.op_type == "Transpose"]
    assert checker_error(written) is None
    wg = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "wg").ravel()

    def weight_order(m: onnx.ModelProto) -> float:  # correlation of the stored INT8 Gemm weight with wg
        stored = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "wg_quantized")
        return float(np.corrcoef(stored.astype(np.float64).ravel(), wg)[0, 1])

    assert weight_order(written) > 0.9 and abs(weight_order(q)) < 0.3  # measured 0.97-0.98 and 0.005


def test_an_nhwc_form_the_edited_plan_no_longer_allows_is_written_plain() -> None:
    """A node before the Flatten edited to float (what users do by hand): the Flatten is written
    plain, as the graph now needs, and the model stays valid."""
    model, plan, _ = _flatten_plan()
    data = plan.to_dict()
    gemm = next(n for n in data["nodes"] if n["op_type"] == "Gemm")
    gemm.update(precision="float", quantized_inputs=[], quantized_outputs=[])
    written = _replayed(model, data)
    assert not [n for n in written.graph.node if n.op_type == "Transpose"]
    assert checker_error(written) is None


def test_plan_json_round_trip(tmp_path) -> None:
    plan, _ = quantize(conv_relu_model(), RNG.normal(size=(2, 3, 16, 16)).astype(np.float32))
    plan.save(tmp_path / "plan.json")
    again = QuantPlan.load(tmp_path / "plan.json")
    assert again.to_dict() == plan.to_dict()


def test_plans_without_newer_config_fields_still_load() -> None:
    plan, _ = quantize(conv_relu_model(), RNG.normal(size=(2, 3, 16, 16)).astype(np.float32))
    data = plan.to_dict()
    assert data["config"]["integer_io"] is False
    for key in ("integer_io", "keep_io_types", "dynamic_op_types", "reduce_range", "weight_calibration"):
        del data["config"][key]  # a plan saved before these options existed
    assert QuantPlan.from_dict(data).config == QuantConfig()
    data["config"].update(activation_type="int16", integer_io=True)
    again = QuantPlan.from_dict(json.loads(json.dumps(data)))
    assert again.config == QuantConfig(activation_type=QType.INT16, integer_io=True)
    data["config"]["activation_type"] = "int4"
    with pytest.raises(BadPlanError, match="int4"):
        QuantPlan.from_dict(data)


def test_plan_naming_an_unknown_node_is_rejected() -> None:
    model = preprocess(conv_relu_model()).model
    plan, _ = quantize(conv_relu_model(), RNG.normal(size=(2, 3, 16, 16)).astype(np.float32))
    plan.nodes[0].name = "not_there"
    with pytest.raises(BadPlanError, match="not_there"):
        rewrite_qdq(model, plan)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d["nodes"][0].update(precision="int3"), "precision"),
        (lambda d: d.pop("tensors"), "not a valid quantcli plan"),
    ],
)
def test_malformed_plans_are_rejected(edit, match) -> None:
    plan, _ = quantize(conv_relu_model(), RNG.normal(size=(2, 3, 16, 16)).astype(np.float32))
    data = plan.to_dict()
    edit(data)
    with pytest.raises(BadPlanError, match=match):
        QuantPlan.from_dict(data)


def test_plans_without_int4_options_load_with_defaults() -> None:
    plan, _ = quantize(conv_relu_model(), RNG.normal(size=(2, 3, 16, 16)).astype(np.float32))
    data = plan.to_dict()
    assert (data["config"]["block_size"], data["config"]["weight_symmetric"]) == (32, False)
    del data["config"]["block_size"], data["config"]["weight_symmetric"]  # a plan from before weights-int4
    again = QuantPlan.from_dict(data)
    assert again.config == plan.config and again.to_dict() == plan.to_dict()


def embedding_model() -> onnx.ModelProto:
    """The same model on every call, whichever tests ran before (its own generator)."""
    rng = np.random.default_rng(1)
    table = numpy_helper.from_array(
        rng.normal(size=(500, 32)).astype(np.float32) * rng.uniform(0.1, 3, (500, 1)).astype(np.float32),
        "table",
    )
    w = numpy_helper.from_array(rng.normal(size=(32, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["emb"], name="lookup"),
            helper.make_node("MatMul", ["emb", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 8])],
        [table, w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mode", ["static", "dynamic", "weights-int8", "weights-int4"])
def test_embedding_tables_are_stored_int8_per_row(tmp_path, mode: str) -> None:
    from quantcli.api import ConvertOptions, convert

    model = embedding_model()
    onnx.save(model, tmp_path / "emb.onnx")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    for i in range(20):
        np.savez(data / f"s{i:02d}.npz", ids=rng.integers(0, 500, size=(1, 6)))
    result = convert(
        ConvertOptions(
            model=tmp_path / "emb.onnx",
            output=tmp_path / "q.onnx",
            mode=mode,
            calib=data if mode == "static" else None,
            eval=data,
        )
    )
    lookup = next(n for n in result.nodes if n.name == "lookup")
    assert lookup.precision == "int8" and "one scale per row" in lookup.reason
    q = onnx.load(tmp_path / "q.onnx")
    assert checker_error(q) is None
    inits = {t.name: t for t in q.graph.initializer}
    assert "table" not in inits and any(
        t.data_type == TensorProto.INT8 and list(t.dims) == [500, 32] for t in inits.values()
    )
    assert not any(
        n.op_type == "DequantizeLinear" and n.output[0] == "table" for n in q.graph.node
    )  # no whole-table DQ
    assert result.size_ratio < 0.35
    assert result.agreement.outputs[0].cosine_min > 0.999
