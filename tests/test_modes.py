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
