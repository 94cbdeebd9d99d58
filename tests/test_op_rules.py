"""Quantizing one more op is one entry in quantize/rules.py: ops that onnxruntime runs on quantized
data (it drops the DequantizeLinear/QuantizeLinear around them) read and return INT8 tensors with
their input's scale and zero point, checked on onnxruntime's optimized graph and on accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import optimized_op_counts
from onnx import TensorProto, helper, numpy_helper

from quantcli.api import ConvertOptions, convert
from quantcli.quantize import rules
from quantcli.quantize.plan import FLOAT, INT8


def _ints(name: str, values: list, dtype=np.int64) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array(np.array(values, dtype), name)


# op -> (extra inputs, their initializers, attributes, channels the second Conv reads)
CASES = {
    "Slice": (["st", "en", "ax"], [_ints("st", [2, 2]), _ints("en", [14, 14]), _ints("ax", [2, 3])], {}, 8),
    "Resize": (["", "sc"], [_ints("sc", [1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 8),
    "Expand": (["sh"], [_ints("sh", [2, 8, 16, 16])], {}, 8),
    "Tile": (["rp"], [_ints("rp", [1, 1, 2, 1])], {}, 8),
    "DepthToSpace": ([], [], {"blocksize": 2}, 2),
}


def _model(op: str, path: Path, **attrs) -> Path:  # noqa: ANN003
    """Conv -> Relu -> op -> Conv: the op between two INT8 convolutions."""
    extra, inits, case_attrs, channels = CASES[op]
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, channels, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node(op, ["r", *extra], ["b"], name="op", **{**case_attrs, **attrs}),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w1, w2, *inits],
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _samples(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _convert(source: Path, tmp_path: Path):  # noqa: ANN202
    out = tmp_path / f"{source.stem}.int8.onnx"
    result = convert(
        ConvertOptions(
            model=source,
            output=out,
            calib=_samples(32, 1),
            eval=_samples(16, 2),
            check_latency=False,
            speed_plan=False,
        )
    )
    return out, result


@pytest.mark.parametrize("op", list(CASES))
def test_op_runs_on_quantized_data_in_onnxruntime(op: str, tmp_path: Path) -> None:
    out, result = _convert(_model(op, tmp_path / f"{op}.onnx"), tmp_path)
    planned = {n.name: n for n in result.nodes}
    assert planned["op"].precision == INT8 and "quantized data" in planned["op"].reason
    onnx.checker.check_model(onnx.load(out), full_check=True)
    counts, optimized = optimized_op_counts(out, tmp_path)
    producer = {o: n for n in optimized.graph.node for o in n.output}
    (node,) = [n for n in optimized.graph.node if n.op_type == op]
    assert producer[node.input[0]].op_type == "QLinearConv", dict(counts)  # no DequantizeLinear before it
    assert counts["QLinearConv"] == 2 and counts["DequantizeLinear"] == 1, dict(counts)  # only the output's
    assert result.agreement.outputs[0].cosine_mean >= 0.9995
    assert result.agreement.outputs[0].sqnr_db >= 30


def test_without_its_entry_the_op_stays_float(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry is all it takes: without it the planner keeps the op in float and names why."""
    monkeypatch.delitem(rules._RULES, "Slice")
    _, result = _convert(_model("Slice", tmp_path / "Slice.onnx"), tmp_path)
    planned = {n.name: n for n in result.nodes}["op"]
    assert planned.precision == FLOAT and "no INT8 kernel for Slice" in planned.reason


def test_linear_resize_stays_float(tmp_path: Path) -> None:
    """onnxruntime keeps the Q/DQ around a linear Resize (it computes it in float): no INT8 form."""
    _, result = _convert(_model("Resize", tmp_path / "Resize.onnx", mode="linear"), tmp_path)
    planned = {n.name: n for n in result.nodes}["op"]
    assert planned.precision == FLOAT and "linear Resize" in planned.reason
