"""inspect: facts checked against the model itself, against what convert reported, and against models
that onnxruntime.quantization made; planted defects each reported with the right finding."""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DATA, SAMPLE_NAMES, SAMPLES, optimized_op_counts, quantcli
from onnx import TensorProto, helper, numpy_helper

import quantcli.inspect as qi
from quantcli.errors import BadModelError
from quantcli.inspect import inspect_model

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MODE_FORMAT = {"static": "QDQ", "dynamic": "dynamic", "weights-int8": "weight-only", "fp16": "fp16"}


def source_compute(name: str) -> tuple[int, int]:
    """(compute nodes, those with a constant weight) of a float sample model."""
    model = onnx.load(SAMPLES / f"{name}.onnx")
    inits = {t.name for t in model.graph.initializer}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    return len(compute), sum(n.input[1] in inits for n in compute)


def initializer_bytes(path: Path) -> dict[str, int]:
    """Bytes per numpy dtype of every initializer, decoded with onnx (no 4-bit types in these models)."""
    totals: dict[str, int] = collections.Counter()
    for t in onnx.load(path).graph.initializer:
        a = numpy_helper.to_array(t)
        totals[a.dtype.name] += a.nbytes
    return dict(totals)


def check_parameters(r: qi.Inspection, path: Path) -> None:
    assert {p.dtype: p.bytes for p in r.parameters} == initializer_bytes(path)
    assert r.file.bytes == path.stat().st_size
    assert sum(p.share for p in r.parameters) == pytest.approx(r.parameter_bytes / path.stat().st_size)
    assert sum(p.tensors for p in r.parameters) == len(onnx.load(path).graph.initializer)


def check_against_convert(c, fmt: str) -> qi.Inspection:  # noqa: ANN001 - conftest.Converted
    r = inspect_model(c.output, nodes=True)
    q = r.quantization
    assert q.format == fmt
    assert q.compute_counts() == c.result.compute_counts()
    planned = {n.name: n.precision for n in c.result.nodes if n.op_type in COMPUTE_OPS}
    # Float compute nodes keep their names in every mode; dynamic renames the quantized ones.
    assert {n.name for n in q.compute if not n.quantized} == {k for k, p in planned.items() if p == "float"}
    if c.result.mode != "dynamic":
        assert {n.name: n.quantized for n in q.compute} == {k: p != "float" for k, p in planned.items()}
    check_parameters(r, c.output)
    assert r.file.checker_error is None and r.file.ort_error is None
    assert not [f for f in r.findings if f.severity == "error"], r.findings
    return r


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_float_sample_model(name: str) -> None:
    path = SAMPLES / f"{name}.onnx"
    r = inspect_model(path)
    model = onnx.load(path)
    assert r.quantization.format == "none"
    total, _ = source_compute(name)
    assert r.quantization.compute_counts() == {"quantized": 0, "float": total, "total": total}
    assert r.quantization.op_counts == {} and r.quantization.scales == {}
    check_parameters(r, path)
    assert r.file.ir_version == model.ir_version and r.file.opsets == {
        "ai.onnx": model.opset_import[0].version
    }
    assert [(v.name, v.dtype) for v in r.inputs] == [("input", "float32")]
    assert r.inputs[0].shape[0] == model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [(v.name, v.shape) for v in r.outputs] == [("logits", ["batch", 10])]
    assert sum(r.operators.values()) == len(model.graph.node)
    assert r.findings == []


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_static_conversion(converted, name: str, tmp_path: Path) -> None:
    c = converted[name]
    r = check_against_convert(c, "QDQ")
    q = r.quantization
    assert q.activation_dtypes == ["uint8"]
    assert q.weight_granularity == {
        "per-channel": q.compute_counts()["quantized"] - _two_activation_matmuls(q)
    }
    # What inspect says onnxruntime runs is what its optimized graph holds.
    counts, _ = optimized_op_counts(c.output, tmp_path)
    ran = collections.Counter(n.ort_op for n in q.compute)
    assert ran == {op: counts[op] for op in ran}
    assert all(n.ort_op in qi.INTEGER_COMPUTE for n in q.compute), ran


def _two_activation_matmuls(q: qi.Quantization) -> int:
    return sum(n.quantized and n.weight is None for n in q.compute)


@pytest.mark.parametrize(
    "name, mode", list(itertools.product(SAMPLE_NAMES, ("dynamic", "weights-int8", "fp16")))
)
def test_other_modes(converted_modes, name: str, mode: str) -> None:
    try:
        c = converted_modes(name, mode)
    except Exception as exc:  # noqa: BLE001
        if mode == "fp16":
            pytest.skip(f"quantcli convert --mode fp16 errors: {type(exc).__name__}: {exc}")
        raise
    r = check_against_convert(c, MODE_FORMAT[mode])
    q = r.quantization
    if mode == "fp16":
        half = {p.dtype: p.bytes for p in r.parameters}.get("float16", 0)
        assert half >= 0.9 * r.parameter_bytes
        assert all(n.weight.dtype == "float16" for n in q.compute if n.precision == "float" and n.weight)
    else:
        assert set(q.weight_granularity) == {"per-channel"}
        assert q.activation_dtypes == (["uint8"] if mode == "dynamic" else [])


class _Samples:
    def __init__(self, name: str, n: int = 8) -> None:
        files = sorted(glob.glob(str(DATA / name / "calib" / "*.npz")))[:n]
        self.it = iter([{"input": np.load(f)["input"]} for f in files])

    def get_next(self):  # noqa: ANN201 - onnxruntime's CalibrationDataReader protocol
        return next(self.it, None)


@pytest.fixture(scope="session")
def ort_quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Each sample model through onnxruntime.quantization: QDQ and QOperator static, and dynamic."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    CalibrationDataReader.register(_Samples)
    out = tmp_path_factory.mktemp("ort_quantized")
    models = {}
    with contextlib.chdir(out):  # onnxruntime writes temporary files into the working directory
        for name in SAMPLE_NAMES:
            src = SAMPLES / f"{name}.onnx"
            for kind, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
                models[(name, kind)] = out / f"{name}_{kind}.onnx"
                quantize_static(
                    src, models[(name, kind)], _Samples(name), quant_format=fmt, per_channel=kind == "qdq"
                )
            models[(name, "dynamic")] = out / f"{name}_dynamic.onnx"
            quantize_dynamic(src, models[(name, "dynamic")])
    return models


@pytest.mark.parametrize("name, kind", list(itertools.product(SAMPLE_NAMES, ("qdq", "qop", "dynamic"))))
def test_models_onnxruntime_quantized(ort_quantized, name: str, kind: str) -> None:
    path = ort_quantized[(name, kind)]
    r = inspect_model(path, nodes=True)
    q = r.quantization
    total, with_weight = source_compute(name)
    # onnxruntime quantizes every Conv/MatMul/Gemm statically; dynamically only those with a constant weight.
    quantized = with_weight if kind == "dynamic" else total
    assert q.compute_counts() == {"quantized": quantized, "float": total - quantized, "total": total}
    assert q.format == {"qdq": "QDQ", "qop": "QOperator", "dynamic": "dynamic"}[kind]
    assert q.activation_dtypes == (["uint8"] if kind == "dynamic" else ["int8"])
    weights = with_weight
    assert q.weight_granularity == ({"per-channel": weights} if kind == "qdq" else {"per-tensor": weights})
    check_parameters(r, path)
    if kind == "qop":
        assert all(n.ort_op in qi.INTEGER_COMPUTE for n in q.compute)


def test_scale_distribution_of_an_onnxruntime_model(ort_quantized) -> None:
    path = ort_quantized[("digits_cnn", "qdq")]
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    feeds_compute = {i for n in model.graph.node if n.op_type in COMPUTE_OPS for i in n.input}
    # Weight scales: of the INT8 initializers dequantized into Conv/Gemm/MatMul (onnxruntime also
    # quantizes BatchNormalization's scale; inspect counts those as "constant").
    scales = {
        n.input[1]: numpy_helper.to_array(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == TensorProto.INT8
        and n.output[0] in feeds_compute
    }
    assert len(scales) == 5
    expected = np.concatenate([a.ravel() for a in scales.values()])
    s = inspect_model(path, use_ort=False).quantization.scales["weight"]
    assert (s.tensors, s.values) == (len(scales), expected.size)
    assert (s.min, s.max) == pytest.approx((expected.min(), expected.max()))
    assert sum(s.histogram.values()) == expected.size


# --- planted defects --------------------------------------------------------------------------


def _qdq_conv(*, quantize_output: bool, w_scale: float = 0.01, extra=()) -> onnx.ModelProto:  # noqa: ANN001
    """x -> Q -> DQ (x_dq) -> Conv(DQ(int8 weight)) [-> Q -> DQ] -> y."""
    rng = np.random.default_rng(0)
    inits = [
        # weights within +-64: no pair can saturate a CPU without VNNI (no u8s8-saturation finding)
        numpy_helper.from_array(rng.integers(-64, 65, (8, 4, 3, 3)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.array(w_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
    ]
    if quantize_output:
        inits.append(numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"))
        inits.append(numpy_helper.from_array(np.array(128, np.uint8), "y_zp"))
    conv_out = "conv" if quantize_output else "y"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_quantize"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_dq"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dq"),
        helper.make_node("Conv", ["x_dq", "w"], [conv_out], name="conv", pads=[1, 1, 1, 1]),
    ]
    if quantize_output:
        nodes += [
            helper.make_node("QuantizeLinear", ["conv", "y_scale", "y_zp"], ["y_q"], name="y_quantize"),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["y"], name="y_dq"),
        ]
    graph = helper.make_graph(
        nodes + list(extra),
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def test_dq_that_onnxruntime_fuses_is_not_reported(tmp_path: Path) -> None:
    r = inspect_model(_save(_qdq_conv(quantize_output=True), tmp_path / "fused.onnx"), nodes=True)
    assert r.file.ort_error is None and r.file.checker_error is None
    assert [n.ort_op for n in r.quantization.compute] == ["QLinearConv"]
    assert r.findings == []


def test_dq_that_onnxruntime_cannot_fuse_is_reported(tmp_path: Path) -> None:
    # No QuantizeLinear after the Conv: onnxruntime has no QLinearConv for it, x_dq stays and costs time.
    r = inspect_model(_save(_qdq_conv(quantize_output=False), tmp_path / "unfused.onnx"), nodes=True)
    assert [n.ort_op for n in r.quantization.compute] == ["Conv"]
    assert [(f.code, f.severity, f.node) for f in r.findings] == [("dq-not-fused", "warning", "x_dq")]
    assert "Conv conv" in r.findings[0].message
    assert inspect_model(tmp_path / "unfused.onnx", use_ort=False).findings == []  # --no-ort: not checked


def test_mixed_format_and_weight_only_node(tmp_path: Path) -> None:
    m = _qdq_conv(quantize_output=True)
    # A second Conv on the float input x shares the dequantized weight: weight-only.
    m.graph.node.append(
        helper.make_node("Conv", ["x", "w"], ["z"], name="weight_only_conv", pads=[1, 1, 1, 1])
    )
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8, 8, 8]))
    r = inspect_model(_save(m, tmp_path / "mixed.onnx"), nodes=True, use_ort=False)
    q = r.quantization
    assert [(n.name, n.scheme, n.precision) for n in q.compute] == [
        ("conv", "QDQ", "int8"),
        ("weight_only_conv", "weight-only", "int8"),
    ]
    assert q.format == "mixed" and q.weight_granularity == {"per-tensor": 1}
    assert r.findings == [] and r.file.checker_error is None


def test_rich_layout_renders_names_verbatim(converted, capsys) -> None:
    from quantcli.report.inspect import render_inspect

    render_inspect(inspect_model(converted["digits_cnn"].output, nodes=True, tensors=True), rich_output=True)
    text = capsys.readouterr().out
    assert "[batch, 1, 8, 8]" in text and "QLinearConv" in text  # shapes are not taken for markup


def _with_initializer(model: onnx.ModelProto, array: np.ndarray, name: str) -> onnx.ModelProto:
    model.graph.initializer.append(numpy_helper.from_array(array, name))
    return model


def _overflowed_fp16() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    m.graph.node.insert(
        0, helper.make_node("Cast", ["big_fp16"], ["big"], name="cast_big", to=TensorProto.FLOAT)
    )
    m.graph.node.append(helper.make_node("Add", ["x", "big"], ["x_plus"], name="add_big"))
    m.graph.output.append(helper.make_tensor_value_info("x_plus", TensorProto.FLOAT, None))
    with np.errstate(over="ignore"):
        w = np.array([1.0, 70000.0, -1e6, 2.0], np.float32).astype(np.float16)  # two overflow to +-inf
    return _with_initializer(m, w, "big_fp16")


def _flushed_fp16() -> onnx.ModelProto:
    m = _overflowed_fp16()
    del m.graph.initializer[-1]
    w = np.array([1e-9, 3e-6, 0.5, 1e-8], np.float32).astype(np.float16)  # zeros and a subnormal
    return _with_initializer(m, w, "big_fp16")


def _dangling_dq_output() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    m.graph.node.append(
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["nobody"], name="dangling_dq")
    )
    return m


def _dangling_dq_input() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    m.graph.node.append(
        helper.make_node("DequantizeLinear", ["ghost", "w_scale"], ["ghost_dq"], name="orphan_dq")
    )
    m.graph.output.append(helper.make_tensor_value_info("ghost_dq", TensorProto.FLOAT, None))
    return m


def _zero_point_out_of_range() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    zp = next(t for t in m.graph.initializer if t.name == "w_zp")
    zp.CopyFrom(numpy_helper.from_array(np.array(300, np.int32), "w_zp"))  # int8 weight, zero point 300
    return m


def _cast_round_trip() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    m.graph.node.append(helper.make_node("Cast", ["y"], ["y16"], name="to_half", to=TensorProto.FLOAT16))
    m.graph.node.append(
        helper.make_node("Cast", ["y16"], ["y32"], name="back_to_float", to=TensorProto.FLOAT)
    )
    m.graph.output.append(helper.make_tensor_value_info("y32", TensorProto.FLOAT, None))
    return m


def _input_is_initializer() -> onnx.ModelProto:
    m = _qdq_conv(quantize_output=True)
    m.graph.input.append(helper.make_tensor_value_info("x_scale", TensorProto.FLOAT, []))
    return m


PLANTED = {
    "scale-invalid": (lambda: _qdq_conv(quantize_output=True, w_scale=0.0), "w_dq"),
    "fp16-overflow": (_overflowed_fp16, "cast_big"),
    "fp16-flushed": (_flushed_fp16, "cast_big"),
    "dangling-qdq": (_dangling_dq_output, "dangling_dq"),
    "zero-point-range": (_zero_point_out_of_range, "w_dq"),
    "cast-round-trip": (_cast_round_trip, "back_to_float"),
    "unused-initializer": (
        lambda: _with_initializer(_qdq_conv(quantize_output=True), np.ones(3), "spare"),
        None,
    ),
    "input-is-initializer": (_input_is_initializer, None),
}


@pytest.mark.parametrize("code", sorted(PLANTED))
def test_planted_defect_is_reported(tmp_path: Path, code: str) -> None:
    make, node = PLANTED[code]
    r = inspect_model(_save(make(), tmp_path / "m.onnx"), use_ort=False)
    hits = [f for f in r.findings if f.code == code]
    assert len(hits) == 1, r.findings
    assert hits[0].node == node
    if node:
        assert node in hits[0].message
    # Only the planted defect (and what it implies for onnx.checker) is reported.
    assert {f.code for f in r.findings} <= {code, "checker"}, r.findings


def test_dangling_dq_with_missing_input(tmp_path: Path) -> None:
    r = inspect_model(_save(_dangling_dq_input(), tmp_path / "m.onnx"), use_ort=True)
    hits = [f for f in r.findings if f.code == "dangling-qdq"]
    assert [(f.node, f.severity) for f in hits] == [("orphan_dq", "error")] and "ghost" in hits[0].message
    assert r.file.checker_error and r.file.ort_error  # neither onnx nor onnxruntime accept it; still read


def test_overflow_counts(tmp_path: Path) -> None:
    r = inspect_model(_save(_overflowed_fp16(), tmp_path / "m.onnx"), use_ort=False)
    (f,) = [f for f in r.findings if f.code == "fp16-overflow"]
    assert f.tensor == "big_fp16" and "2 values overflowed to inf" in f.message


# --- reading ----------------------------------------------------------------------------------


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    real = qi._decode

    def counting(t: onnx.TensorProto, base_dir: Path) -> np.ndarray:
        counts[t.name] += 1
        return real(t, base_dir)

    monkeypatch.setattr(qi, "_decode", counting)
    return counts


def test_each_tensor_is_decoded_at_most_once_and_weights_only_for_the_saturation_check(
    converted, monkeypatch
) -> None:
    from quantcli.inspect.saturation import u8s8_layers

    counts = _count_decodes(monkeypatch)
    path = converted["digits_vit"].output
    r = inspect_model(path, nodes=True, tensors=True)
    assert counts and max(counts.values()) == 1
    roles = {t.name: t.role for t in r.tensors}
    # INT8 weights are decoded only where the int16 pair check needs them: U8S8 integer layers
    checked = {layer.weight for layer in u8s8_layers(onnx.load(path).graph)}
    assert checked and {n for n in counts if roles[n] not in ("scale", "zero point")} == checked
    assert r.parameter_bytes > 0.9 * sum(initializer_bytes(path).values())


def test_no_ort_reads_no_external_weight_data(converted, monkeypatch, tmp_path: Path) -> None:
    source = converted["digits_cnn"].output
    inline = inspect_model(source, use_ort=False)
    model = onnx.load(source)
    path = tmp_path / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    saved = onnx.load(path, load_external_data=False)
    location = {
        t.name: e.value for t in saved.graph.initializer for e in t.external_data if e.key == "location"
    }
    roles = {t.name: t.role for t in inspect_model(source, use_ort=False, tensors=True).tensors}
    removed = [name for name, role in roles.items() if role not in ("scale", "zero point")]
    for name in removed:  # every weight's values are gone from disk: reading any would fail
        (tmp_path / location[name]).unlink()
    counts = _count_decodes(monkeypatch)
    r = inspect_model(path, use_ort=False)
    assert not [f for f in r.findings if f.code == "unreadable-tensor"]
    assert r.quantization.scales == inline.quantization.scales
    assert r.quantization.zero_points == inline.quantization.zero_points
    assert {p.dtype: p.bytes for p in r.parameters} == {p.dtype: p.bytes for p in inline.parameters}
    assert not set(counts) & set(removed) and max(counts.values()) == 1
    missing = {e.location for e in r.file.external if e.bytes is None}
    assert missing == {location[name] for name in removed}


def test_unreadable_file_raises_the_load_error(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"\x01\x02garbage" * 50)
    with pytest.raises(BadModelError, match="not an ONNX model"):
        inspect_model(tmp_path / "junk.onnx")


# --- command line -----------------------------------------------------------------------------


STATS = {"tensors": int, "values": int, "min": (float, type(None)), "median": (float, type(None))}
STATS |= {"max": (float, type(None))}
QPARAMS = {"tensor": str, "dtype": str, "granularity": (str, type(None)), "axis": (int, type(None))}
QPARAMS |= {"block_size": (int, type(None)), "scales": int, "scale_min": (float, type(None))}
QPARAMS |= {"scale_max": (float, type(None)), "zero_point_min": (int, type(None))}
QPARAMS |= {"zero_point_max": (int, type(None))}
VALUE = {"name": str, "dtype": str, "shape": (list, type(None))}
SCHEMA = {
    "schema_version": int,
    "command": str,
    "quantcli_version": str,
    "model": str,
    "file": {
        "bytes": int,
        "total_bytes": int,
        "external_data": [{"location": str, "bytes": (int, type(None))}],
        "ir_version": int,
        "opsets": dict,
        "producer": str,
        "checker": {"passed": bool, "error": (str, type(None))},
        "onnxruntime": {"checked": bool, "loaded": (bool, type(None)), "error": (str, type(None))},
    },
    "inputs": [VALUE],
    "outputs": [VALUE],
    "operators": [{"domain": str, "op_type": str, "count": int}],
    "parameters": {
        "initializers": int,
        "bytes": int,
        "share": float,
        "by_dtype": [{"dtype": str, "tensors": int, "elements": int, "bytes": int, "share": float}],
        "constant_nodes": {"count": int, "bytes": int},
    },
    "quantization": {
        "format": str,
        "op_counts": dict,
        "compute_nodes": {"quantized": int, "float": int, "total": int},
        "schemes": dict,
        "onnxruntime_ops": (dict, type(None)),
        "weights": dict,
        "activation_dtypes": list,
        "scales": dict,
        "zero_points": dict,
    },
    "nodes": (list, type(None)),
    "tensors": (list, type(None)),
    "findings": [
        {"code": str, "severity": str, "node": (str, type(None)), "tensor": (str, type(None)), "message": str}
    ],
}
NODE = {"name": str, "op_type": str, "domain": str, "scheme": str, "precision": str}
NODE |= {"weight": (dict, type(None)), "input": (dict, type(None)), "output": (dict, type(None))}
NODE |= {"onnxruntime_op": (str, type(None))}
TENSOR = {"name": str, "dtype": str, "shape": list, "bytes": int, "location": (str, type(None)), "role": str}


def validate(data: object, schema: object, where: str = "$") -> None:
    """Required keys and types, recursively: a dict schema is an object, [x] a list of x."""
    if isinstance(schema, dict):
        assert isinstance(data, dict), where
        missing = set(schema) - set(data)
        assert not missing, f"{where}: missing {missing}"
        for k, sub in schema.items():
            validate(data[k], sub, f"{where}.{k}")
    elif isinstance(schema, list):
        assert isinstance(data, list), where
        for i, item in enumerate(data):
            validate(item, schema[0], f"{where}[{i}]")
    else:
        ok = schema if isinstance(schema, tuple) else (schema,)
        if float in ok:
            ok = (*ok, int)
        assert isinstance(data, ok) and not (bool not in ok and isinstance(data, bool)), f"{where}: {data!r}"


def validate_inspect(data: dict) -> None:
    validate(data, SCHEMA)
    assert data["schema_version"] == 1 and data["command"] == "inspect"
    assert data["quantization"]["format"] in qi.FORMATS
    for s in data["quantization"]["scales"].values():
        validate(s, {**STATS, "histogram": dict})
    for s in data["quantization"]["zero_points"].values():
        validate(s, {**STATS, "nonzero": int})
    for n in data["nodes"] or []:
        validate(n, NODE)
        for part in ("weight", "input", "output"):
            if n[part] is not None:
                validate(n[part], QPARAMS)
    for t in data["tensors"] or []:
        validate(t, TENSOR)
    assert {f["severity"] for f in data["findings"]} <= {"error", "warning", "info"}


def test_cli_plain_text(converted, tmp_path: Path) -> None:
    proc = quantcli("inspect", converted["digits_vit"].output, "--nodes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and "\x1b[" not in proc.stdout
    assert re.search(r"^  format +QDQ$", proc.stdout, re.MULTILINE)
    for needle in ("34 of 34 quantized", "onnxruntime runs", "compute nodes (34)"):
        assert needle in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_cli_json(converted, tmp_path: Path) -> None:
    c = converted["digits_cnn"]
    proc = quantcli("inspect", c.output, "--json", "--nodes", "--tensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    validate_inspect(data)
    assert data["quantization"]["compute_nodes"] == c.result.compute_counts()
    assert len(data["nodes"]) == c.result.compute_counts()["total"]
    assert len(data["tensors"]) == data["parameters"]["initializers"]
    assert data["file"]["onnxruntime"] == {"checked": True, "loaded": True, "error": None}
    proc = quantcli("inspect", c.output, "--json", "--no-ort", cwd=tmp_path)
    data = json.loads(proc.stdout)
    validate_inspect(data)
    assert data["nodes"] is None and data["tensors"] is None
    assert data["file"]["onnxruntime"] == {"checked": False, "loaded": None, "error": None}


def test_cli_model_onnxruntime_cannot_load_is_exit_0(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    path = _save(helper.make_model(graph, opset_imports=opsets), tmp_path / "custom.onnx")
    proc = quantcli("inspect", path, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    validate_inspect(data)
    assert (
        data["file"]["onnxruntime"]["loaded"] is False
        and "Frobnicate" in data["file"]["onnxruntime"]["error"]
    )
    assert [f["code"] for f in data["findings"]] == ["ort-load"]


BAD = {
    "missing": (lambda d: d / "nope.onnx", ["nope.onnx", "no such file"]),
    "directory": (lambda d: d, ["is a directory"]),
    "not onnx": (
        lambda d: _write(d / "junk.onnx", b"\x01\x02garbage" * 50),
        ["junk.onnx", "not an ONNX model"],
    ),
    "empty": (lambda d: _write(d / "empty.onnx", b""), ["empty.onnx", "file is empty"]),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_cli_unreadable_model_is_one_line_exit_2(tmp_path: Path, case: str) -> None:
    make, needles = BAD[case]
    proc = quantcli("inspect", make(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert lines[0].startswith("quantcli inspect: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_cli_unreadable_model_with_json(tmp_path: Path) -> None:
    proc = quantcli("inspect", tmp_path / "nope.onnx", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert data["command"] == "inspect" and data["error"]["exit_code"] == 2
