"""End to end on the shipped sample models: validity, size, accuracy, what onnxruntime fuses, replay."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, SAMPLE_NAMES, Converted, optimized_op_counts, sha256

from quantcli.api import ConvertOptions, convert
from quantcli.calibration.data import InputSpec, iter_samples, list_samples

# Accuracy floors, each a little below what the shipped models measure (see README).
MIN_COSINE = {"digits_cnn": 0.9995, "digits_vit": 0.999, "digits_mlp": 0.9999}
MIN_TOP1_AGREEMENT = {"digits_cnn": 0.99, "digits_vit": 0.98, "digits_mlp": 0.99}
MAX_LABEL_DROP = {"digits_cnn": 0.01, "digits_vit": 0.01, "digits_mlp": 0.01}

# Which integer kernels onnxruntime uses for each planned INT8 compute op.
KERNELS = {
    "Conv": ("QLinearConv",),
    "Gemm": ("QGemm",),
    "MatMul": ("QLinearMatMul", "MatMulIntegerToFloat"),
}


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_output_is_valid_and_runs(converted: dict[str, Converted], name: str) -> None:
    c = converted[name]
    model = onnx.load(c.output)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(c.output), providers=["CPUExecutionProvider"])
    specs = InputSpec.from_model(model)
    feeds = next(iter_samples(list_samples(DATA / name / "eval")[:1], specs))
    (logits,) = sess.run(None, feeds)
    assert logits.shape == (1, 10) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_size_ratio(converted: dict[str, Converted], name: str) -> None:
    c = converted[name]
    ratio = c.output.stat().st_size / c.source.stat().st_size
    assert ratio <= 0.30
    assert c.result.size_ratio == pytest.approx(ratio)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_accuracy_against_float_and_labels(converted: dict[str, Converted], name: str) -> None:
    a = converted[name].result.agreement
    assert a is not None and a.samples == 300
    (logits,) = a.outputs
    assert logits.cosine_mean >= MIN_COSINE[name]
    assert logits.top1_agreement >= MIN_TOP1_AGREEMENT[name]
    assert a.reference_accuracy >= 0.95
    assert a.reference_accuracy - a.candidate_accuracy <= MAX_LABEL_DROP[name]


def test_agreement_matches_an_independent_computation(converted: dict[str, Converted]) -> None:
    c = converted["digits_cnn"]
    ref = ort.InferenceSession(str(c.source), providers=["CPUExecutionProvider"])
    cand = ort.InferenceSession(str(c.output), providers=["CPUExecutionProvider"])
    files = list_samples(DATA / "digits_cnn" / "eval")
    x = np.concatenate([np.load(f)["input"] for f in files])
    r, q = ref.run(None, {"input": x})[0], cand.run(None, {"input": x})[0]
    a = c.result.agreement.outputs[0]
    assert a.top1_agreement == pytest.approx(np.mean(r.argmax(1) == q.argmax(1)))
    assert a.max_abs_error == pytest.approx(np.abs(r - q).max(), rel=1e-4)
    labels = np.load(DATA / "digits_cnn" / "eval" / "labels.npy")
    assert c.result.agreement.candidate_accuracy == pytest.approx(np.mean(q.argmax(1) == labels))


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_onnxruntime_runs_planned_compute_nodes_in_integer_kernels(
    converted: dict[str, Converted], name: str, tmp_path
) -> None:
    c = converted[name]
    counts, optimized = optimized_op_counts(c.output, tmp_path)
    planned = {op: 0 for op in KERNELS}
    for node in c.result.nodes:
        if node.op_type in KERNELS and node.precision == "int8":
            planned[node.op_type] += 1
    assert sum(planned.values()) > 0
    for op, kernels in KERNELS.items():
        assert sum(counts[k] for k in kernels) == planned[op], (op, dict(counts))
        assert counts[op] == 0, f"{op} left in float by onnxruntime: {dict(counts)}"
    # No DequantizeLinear left feeding a compute op: that would be a float op plus Q/DQ cost.
    producers = {o: n for n in optimized.graph.node for o in n.output}
    for node in optimized.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"):
            assert all(
                producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input
            )


def test_cnn_batchnorm_was_fused_and_all_compute_is_int8(converted: dict[str, Converted]) -> None:
    r = converted["digits_cnn"].result
    assert "fuse_conv_bn" in r.preprocess_applied
    assert not any(n.op_type == "BatchNormalization" for n in r.nodes)
    assert r.compute_counts() == {"quantized": 5, "float": 0, "total": 5}
    assert any(
        n.op_type == "BatchNormalization" for n in onnx.load(converted["digits_cnn"].source).graph.node
    )


def test_float_nodes_carry_a_reason(converted: dict[str, Converted]) -> None:
    nodes = converted["digits_vit"].result.nodes
    ln = [n for n in nodes if n.op_type == "LayerNormalization"]
    assert ln and all(n.precision == "float" and "no INT8 kernel" in n.reason for n in ln)
    assert all(n.reason for n in nodes)


def test_input_model_is_not_modified(converted: dict[str, Converted], tmp_path) -> None:
    c = converted["digits_mlp"]
    before = sha256(c.source)
    convert(
        ConvertOptions(
            model=c.source, output=tmp_path / "out.onnx", calib=DATA / "digits_mlp" / "calib", calib_samples=8
        )
    )
    assert sha256(c.source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_plan_replay_is_byte_identical(converted: dict[str, Converted], name: str, tmp_path) -> None:
    c = converted[name]
    replay = tmp_path / "replay.onnx"
    result = convert(ConvertOptions(model=c.source, output=replay, plan=c.plan, eval=DATA / name / "eval"))
    assert result.plan_replayed
    assert replay.read_bytes() == c.output.read_bytes()


def _edit_plan(plan_path, tmp_path, pick) -> tuple[str, object]:
    plan = json.loads(plan_path.read_text())
    target = pick(plan["nodes"])["name"]
    for n in plan["nodes"]:
        if n["name"] == target:
            n["precision"] = "float"
            n["reason"] = "kept in float by hand"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(plan))
    return target, edited


def test_edited_plan_changes_exactly_the_edited_node(converted: dict[str, Converted], tmp_path) -> None:
    c = converted["digits_cnn"]
    target, edited = _edit_plan(
        c.plan, tmp_path, lambda nodes: [n for n in nodes if n["op_type"] == "Gemm"][-1]
    )
    out = tmp_path / "edited.onnx"
    result = convert(
        ConvertOptions(model=c.source, output=out, plan=edited, eval=DATA / "digits_cnn" / "eval")
    )

    before = {n.name: n.precision for n in c.result.nodes}
    after = {n.name: n.precision for n in result.nodes}
    assert {k for k in before if before[k] != after[k]} == {target}

    model = onnx.load(out)
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.name == target)
    assert gemm.input[1] not in producers  # the weight is a float initializer again, no DequantizeLinear
    assert any(
        i.data_type == onnx.TensorProto.FLOAT and i.name == gemm.input[1] for i in model.graph.initializer
    )
    counts, _ = optimized_op_counts(out, tmp_path)
    assert counts["QGemm"] == 1 and counts["QLinearConv"] == 3
    assert counts["Gemm"] + counts["FusedGemm"] == 1
    assert result.warnings == []
    assert result.agreement.outputs[0].cosine_mean > 0.9995


def test_float_conv_between_qdq_stays_float(converted: dict[str, Converted], tmp_path) -> None:
    """onnxruntime's WeightBiasQuantization re-quantizes a float Conv that reads a per-tensor
    DequantizeLinear and feeds a QuantizeLinear (it once ran as a fourth QLinearConv here, with
    per-tensor weights); the Conv's own per-channel DequantizeLinear keeps it float."""
    c = converted["digits_cnn"]
    target, edited = _edit_plan(
        c.plan, tmp_path, lambda nodes: [n for n in nodes if n["op_type"] == "Conv"][1]
    )
    out = tmp_path / "edited.onnx"
    result = convert(ConvertOptions(model=c.source, output=out, plan=edited))
    graph = onnx.load(out).graph
    conv = next(n for n in graph.node if n.name == target)
    assert any(i.data_type == onnx.TensorProto.FLOAT and i.name == conv.input[1] for i in graph.initializer)
    reader = next(n for n in graph.node if conv.input[0] in n.output)
    assert (
        reader.op_type == "DequantizeLinear" and next(a.i for a in reader.attribute if a.name == "axis") == 1
    )
    assert not result.warnings
    counts, optimized = optimized_op_counts(out, tmp_path)
    assert counts["QLinearConv"] == 2 and counts["Conv"] == 1
    float_conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    weight = next(t for t in optimized.graph.initializer if t.name == float_conv.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT


def test_shape_reads_no_dequantized_tensor(converted: dict[str, Converted], tmp_path) -> None:
    """digits_vit's Shapes read quantized activations: they read the quantized tensor, so
    onnxruntime runs no DequantizeLinear for them (it did: 2 per run, each of the whole tensor)."""
    _, optimized = optimized_op_counts(converted["digits_vit"].output, tmp_path)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    shapes = [n for n in optimized.graph.node if n.op_type == "Shape"]
    assert shapes
    for node in shapes:
        producer = producers.get(node.input[0])
        assert producer is None or producer.op_type != "DequantizeLinear", node.name


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_no_integer_elementwise_result_is_only_dequantized(
    converted: dict[str, Converted], name: str, tmp_path
) -> None:
    """An integer elementwise kernel whose result only DequantizeLinear reads requantizes for
    nothing: such nodes stay float (digits_vit's residual Adds and score Muls), and Softmax is
    never QLinearSoftmax (slower than float Softmax + QuantizeLinear)."""
    counts, optimized = optimized_op_counts(converted[name].output, tmp_path)
    assert counts["QLinearSoftmax"] == 0
    readers: dict[str, list] = {}
    for node in optimized.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in optimized.graph.output}
    for node in optimized.graph.node:
        if node.op_type in (
            "QLinearAdd",
            "QLinearMul",
            "QLinearConcat",
            "QLinearSigmoid",
            "QLinearLeakyRelu",
        ):
            out = node.output[0]
            assert out in outputs or any(r.op_type != "DequantizeLinear" for r in readers.get(out, [])), (
                node.name
            )


def test_cnn_head_runs_no_transpose_back_from_nhwc(converted: dict[str, Converted], tmp_path) -> None:
    """With all optimizations onnxruntime runs digits_cnn's QLinearConvs channels-last; its Flatten
    reads NHWC order, so the only Transpose left is the one of the model input (was 2)."""
    counts, optimized = optimized_op_counts(converted["digits_cnn"].output, tmp_path, layout=True)
    assert counts["QLinearConv"] == 3 and counts["Transpose"] == 1, dict(counts)
    producers = {o: n for n in optimized.graph.node for o in n.output}
    transpose = next(n for n in optimized.graph.node if n.op_type == "Transpose")
    assert producers[transpose.input[0]].op_type == "QuantizeLinear"
