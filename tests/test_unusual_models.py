"""Valid but unusual models through static mode (and the other modes where they share the path):
float16/float64 models, free height/width calibrated on samples of different sizes, a graph input
that is also a graph output, IR 3 models whose initializers are listed as graph inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import quantcli
from onnx import TensorProto, helper, numpy_helper

from quantcli.api import ConvertOptions, convert
from quantcli.calibration.collect import collect_ranges
from quantcli.calibration.data import InputSpec, validate_sample
from quantcli.calibration.ranges import CalibMethod
from quantcli.errors import BadDataError, UnsupportedModelError
from quantcli.preprocess import preprocess
from quantcli.preprocess.float32 import ComputeInFloat32
from quantcli.preprocess.opset import UpgradeOpset

RNG = np.random.default_rng(17)
F16, F32, F64 = TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE
NP = {F16: np.float16, F32: np.float32, F64: np.float64}


def _model(nodes, inputs, outputs, inits, *, opset: int = 17, ir: int | None = None) -> onnx.ModelProto:  # noqa: ANN001
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        model.ir_version = ir
    onnx.checker.check_model(model, full_check=True)
    return model


def _init(name: str, shape: tuple[int, ...], dtype=np.float32, scale: float = 0.3) -> onnx.TensorProto:  # noqa: ANN001
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(dtype), name)


def conv_model(elem: int, *, hw: tuple = (8, 8), batch: object = 1) -> onnx.ModelProto:
    """Conv -> Relu -> 1x1 Conv -> Add(residual), all in `elem`."""
    dt = NP[elem]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "r"], ["y"], name="add"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", elem, [batch, 3, *hw])],
        [helper.make_tensor_value_info("y", elem, [batch, 4, *hw])],
        [_init("w", (4, 3, 3, 3), dt), _init("b", (4,), dt, 0.1), _init("w2", (4, 4, 1, 1), dt)],
    )


def mlp_model(elem: int) -> onnx.ModelProto:
    """MatMul -> Add -> Relu -> MatMul (onnxruntime runs these in float64 too, unlike Conv)."""
    dt = NP[elem]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", elem, ["n", 16])],
        [helper.make_tensor_value_info("y", elem, ["n", 8])],
        [_init("w", (16, 32), dt), _init("b", (32,), dt, 0.1), _init("w2", (32, 8), dt)],
    )


def _samples(directory: Path, shapes: list[tuple[int, ...]], dtype=np.float32) -> Path:  # noqa: ANN001
    directory.mkdir()
    for i, shape in enumerate(shapes):
        np.save(directory / f"s{i:02d}.npy", RNG.standard_normal(shape).astype(dtype))
    return directory


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_output(
    path: Path, source: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], reference=None
) -> None:  # noqa: ANN001
    """The converted model passes the full check, keeps the source's I/O names and types, and
    its outputs on the source's inputs stay close to the float ones (`reference`: a float model
    onnxruntime can run, when it cannot run the source)."""
    onnx.checker.check_model(str(path), full_check=True)
    out = onnx.load(str(path))
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in (*m.graph.input, *m.graph.output)]  # noqa: E731
    assert io(out) == io(source)
    for f in feeds:
        want = _run(reference or source, f)
        got = _run(path, f)
        for w, g in zip(want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert _cosine(w, g) > 0.99


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# These small models run faster in float on AVX2 (the speed plan would keep their nodes float):
# the tests below check the integer form, so they convert with speed_plan=False.


def _all_int8(mode: str) -> dict:
    return {"speed_plan": False} if mode in ("static", "mixed") else {}


# -- float16 / float64 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "elem", "sample_elem"),
    [
        (conv_model, F16, F16),
        (conv_model, F16, F32),  # float32 samples for a float16 model are rounded to float16
        (mlp_model, F64, F64),
        (mlp_model, F64, F32),
    ],
    ids=["float16", "float16-float32-samples", "float64", "float64-float32-samples"],
)
def test_static_converts_float16_and_float64_models(tmp_path, build, elem, sample_elem) -> None:  # noqa: ANN001
    source = build(elem)
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    shape = (1, 3, 8, 8) if build is conv_model else (2, 16)
    calib = _samples(tmp_path / "calib", [shape] * 8, NP[sample_elem])
    result = convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False))
    assert result.compute_counts()["quantized"] == 2
    assert "QuantizeLinear" in _ops(tmp_path / "q.onnx")
    assert result.agreement is not None and result.agreement.outputs[0].cosine_min > 0.99
    feeds = [{"x": RNG.standard_normal(shape).astype(NP[elem])} for _ in range(3)]
    _check_output(tmp_path / "q.onnx", source, feeds)
    assert onnx.load(str(path)) == source  # the input model is never modified


@pytest.mark.parametrize("mode", ["dynamic", "weights-int8", "weights-int4", "bf16", "fp16"])
@pytest.mark.parametrize("elem", [F16, F64], ids=["float16", "float64"])
def test_other_modes_on_float16_and_float64_models(tmp_path, mode, elem) -> None:  # noqa: ANN001
    source = mlp_model(elem)
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    if mode in ("fp16", "bf16") and elem == F16:  # nothing to convert: refused, with the reason
        with pytest.raises(
            UnsupportedModelError, match=f"already float16.*--mode {mode} has nothing to convert"
        ):
            convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", mode=mode))
        assert not (tmp_path / "q.onnx").exists()
        return
    result = convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", mode=mode))
    feeds = [{"x": RNG.standard_normal((2, 16)).astype(NP[elem])} for _ in range(3)]
    _check_output(tmp_path / "q.onnx", source, feeds)
    counts = result.compute_counts()
    if mode in ("dynamic", "weights-int8"):  # computed in float32 on INT8 weights
        assert counts["quantized"] == 2
    if mode in ("fp16", "bf16") and elem == F64:  # float64 goes through float32, then is converted
        assert result.stored_weight_nodes() == 2


def test_float64_conv_that_onnxruntime_cannot_run_is_measured_in_float32(tmp_path) -> None:
    """onnxruntime has no float64 Conv: the converted model runs, and the report says what the
    accuracy figures compare with."""
    source = conv_model(F64)
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(1, 3, 8, 8)] * 8, np.float64)
    result = convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False))
    assert result.compute_counts()["quantized"] == 2
    assert any("compare with the model computed in float32" in w for w in result.warnings)
    reference = preprocess(source, float32_from=(F64,)).model
    feeds = [{"x": RNG.standard_normal((1, 3, 8, 8))} for _ in range(2)]
    _check_output(tmp_path / "q.onnx", source, feeds, reference=reference)


def test_float32_samples_beyond_float16_range_are_bad_data() -> None:
    spec = InputSpec("x", np.dtype(np.float16), (1, 2))
    feeds = {"x": np.array([[1.0, 1e5]], dtype=np.float32)}
    with pytest.raises(BadDataError, match="beyond float16's range"):
        validate_sample("s.npy", feeds, [spec])
    feeds = {"x": np.array([[1.0, 2.5]], dtype=np.float32)}
    validate_sample("s.npy", feeds, [spec])
    assert feeds["x"].dtype == np.float16
    with pytest.raises(BadDataError, match="has dtype int32"):
        validate_sample("s.npy", {"x": np.zeros((1, 2), np.int32)}, [spec])


def _mixed_model() -> onnx.ModelProto:
    """float32 in and out; a float16 island (Cast, Constant, ConstantOfShape) and a float64 If."""
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["d"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F64, None)]
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["d"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F64, None)]
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Cast", ["m"], ["h"], name="to16", to=F16),
        helper.make_node("MatMul", ["h", "w16"], ["h2"], name="mm16"),
        helper.make_node(
            "Constant", [], ["k"], name="k", value=numpy_helper.from_array(np.array(0.5, np.float16))
        ),
        helper.make_node("Mul", ["h2", "k"], ["h3"], name="mul"),
        helper.make_node("Shape", ["h3"], ["s"], name="shape"),
        helper.make_node(
            "ConstantOfShape",
            ["s"],
            ["one"],
            name="cos",
            value=numpy_helper.from_array(np.ones(1, np.float16)),
        ),
        helper.make_node("Add", ["h3", "one"], ["h4"], name="add"),
        helper.make_node("Cast", ["h4"], ["d"], name="to64", to=F64),
        helper.make_node("ReduceSum", ["d"], ["sum"], name="sum", keepdims=0),
        helper.make_node("Greater", ["sum", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["i"], name="if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Cast", ["i"], ["y"], name="to32", to=F32),
    ]
    inits = [
        _init("w", (8, 8)),
        _init("w16", (8, 8), np.float16),
        numpy_helper.from_array(np.array(0.0), "zero"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 8])],
        [helper.make_tensor_value_info("y", F32, [2, 8]), helper.make_tensor_value_info("h4", F16, [2, 8])],
        inits,
    )


def test_compute_in_float32_lifts_every_float16_and_float64_value() -> None:
    source = _mixed_model()
    model = onnx.ModelProto()
    model.CopyFrom(source)
    result = ComputeInFloat32().call(model)
    assert result.modified and "float16 and float64" in result.notes[0]
    onnx.checker.check_model(result.model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    interface = {v.name for v in (*inferred.graph.input, *inferred.graph.output)}
    inner = [v for v in inferred.graph.value_info if v.name not in interface]
    assert inner and all(
        v.type.tensor_type.elem_type in (F32, TensorProto.BOOL, TensorProto.INT64) for v in inner
    )
    for x in (
        RNG.standard_normal((2, 8)).astype(np.float32),
        -np.ones((2, 8), np.float32),
    ):  # both If branches
        want, got = _run(source, {"x": x}), _run(result.model, {"x": x})
        for w, g in zip(want, got, strict=True):
            assert w.dtype == g.dtype
            np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=2e-2, atol=2e-2)
    assert not ComputeInFloat32().call(mlp_model(F32)).modified


def test_float16_sequence_values_are_lifted_too(tmp_path) -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("SequenceConstruct", ["a", "b"], ["s"], name="seq"),
        helper.make_node("ConcatFromSequence", ["s"], ["c"], name="concat", axis=0),
        helper.make_node("MatMul", ["c", "w"], ["y"], name="mm2"),
    ]
    source = onnx.shape_inference.infer_shapes(  # a seq(float16) value_info
        _model(
            nodes,
            [helper.make_tensor_value_info("x", F16, [2, 8])],
            [helper.make_tensor_value_info("y", F16, [4, 8])],
            [_init("w", (8, 8), np.float16)],
        )
    )
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(2, 8)] * 8, np.float16)
    result = convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False))
    assert result.compute_counts()["quantized"] == 2
    _check_output(tmp_path / "q.onnx", source, [{"x": RNG.standard_normal((2, 8)).astype(np.float16)}])


def test_mixed_model_quantizes_its_float16_island_too(tmp_path) -> None:
    source = _mixed_model()
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(2, 8)] * 8)
    result = convert(ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False))
    assert result.compute_counts()["quantized"] == 2
    _check_output(tmp_path / "q.onnx", source, [{"x": RNG.standard_normal((2, 8)).astype(np.float32)}])


# -- dynamic height/width --------------------------------------------------------------------------

SIZES = [(1, 3, 6 + i, 5 + 2 * i) for i in range(6)]


@pytest.mark.parametrize("method", ["minmax", "entropy", "mse"])
def test_static_calibrates_across_input_sizes(tmp_path, method) -> None:  # noqa: ANN001
    source = conv_model(F32, hw=("h", "w"), batch="n")  # a free batch axis: samples run batched
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", SIZES + SIZES[:4])  # 2 held out, of 2 sizes
    if method == "minmax":  # once through the CLI, for the exit code
        proc = quantcli(
            "convert",
            path,
            "--calib",
            calib,
            "--calib-method",
            method,
            "-o",
            tmp_path / "q.onnx",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert "output y" in proc.stdout  # evaluated on the two held-out samples, of different sizes
    else:
        calibration = _config(CalibMethod(method))
        result = convert(
            ConvertOptions(
                model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False, calibration=calibration
            )
        )
        assert result.agreement.outputs[0].samples == 2 and result.compute_counts()["quantized"] == 2
    feeds = [{"x": RNG.standard_normal(s).astype(np.float32)} for s in SIZES[::2]]
    _check_output(tmp_path / "q.onnx", source, feeds)


def test_ranges_over_samples_of_different_sizes_see_every_sample() -> None:
    model = conv_model(F32, hw=("h", "w"), batch="n")
    samples = [{"x": RNG.standard_normal(s).astype(np.float32)} for s in SIZES]
    samples[3]["x"][0, 0, 0, 0] = 40.0  # the extreme of one mid-list sample of its own size
    ranges = collect_ranges(preprocess(model).model, lambda: iter(samples))
    assert ranges.samples == len(SIZES)
    assert ranges.ranges["x"][1] == 40.0
    assert ranges.channel_means["x"].shape == (3,)  # per channel, over samples of every size
    expected = sum(float(s["x"][0, 1].sum()) for s in samples) / sum(s["x"][0, 1].size for s in samples)
    assert ranges.channel_means["x"][1] == pytest.approx(expected)
    minmax = collect_ranges(preprocess(model).model, lambda: iter(samples), _config(CalibMethod.MINMAX))
    assert minmax.ranges["x"] == (min(float(s["x"].min()) for s in samples), 40.0)


def _config(method: CalibMethod):  # noqa: ANN202
    from quantcli.calibration.collect import CalibrationConfig

    return CalibrationConfig(method=method)


# -- a graph input that is also a graph output -----------------------------------------------------


@pytest.mark.parametrize("mode", ["static", "dynamic", "mixed", "fp16"])
def test_graph_input_that_is_also_an_output_stays_exact(tmp_path, mode) -> None:  # noqa: ANN001
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    source = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 8])],
        [helper.make_tensor_value_info("y", F32, [2, 4]), helper.make_tensor_value_info("x", F32, [2, 8])],
        [_init("w", (8, 4))],
    )
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(2, 8)] * 8)
    result = convert(
        ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, mode=mode, **_all_int8(mode))
    )
    assert result.compute_counts()["quantized"] == (0 if mode == "fp16" else 1)
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    _check_output(tmp_path / "q.onnx", source, [{"x": x}])
    np.testing.assert_array_equal(_run(tmp_path / "q.onnx", {"x": x})[1], x)  # exactly the input


def test_integer_io_passes_a_graph_input_that_is_an_output_through(tmp_path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    source = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 8])],
        [helper.make_tensor_value_info("y", F32, [2, 4]), helper.make_tensor_value_info("x", F32, [2, 8])],
        [_init("w", (8, 4))],
    )
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(2, 8)] * 8)
    result = convert(
        ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False, integer_io=True)
    )
    assert set(result.io_quantization) == {"x", "y"}
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)
    q = RNG.integers(0, 256, (2, 8)).astype(np.uint8)
    np.testing.assert_array_equal(_run(tmp_path / "q.onnx", {"x": q})[1], q)  # the integer input, as is


@pytest.mark.parametrize("mode", ["static", "weights-int8", "mixed"])
def test_weight_that_is_also_an_output_stays_exact(tmp_path, mode) -> None:  # noqa: ANN001
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    source = _model(
        nodes,
        [helper.make_tensor_value_info("x", F32, [2, 8])],
        [helper.make_tensor_value_info("y", F32, [2, 4]), helper.make_tensor_value_info("w", F32, [8, 4])],
        [_init("w", (8, 4))],
    )
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(2, 8)] * 8)
    result = convert(
        ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, mode=mode, **_all_int8(mode))
    )
    assert result.compute_counts()["quantized"] == 1
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    _check_output(tmp_path / "q.onnx", source, [{"x": x}])
    np.testing.assert_array_equal(
        _run(tmp_path / "q.onnx", {"x": x})[1], numpy_helper.to_array(source.graph.initializer[0])
    )


# -- IR 3 models -------------------------------------------------------------------------------------


def ir3_model() -> onnx.ModelProto:
    """Opset 7, IR 3: every initializer also listed as a graph input, as old exporters wrote them."""
    inits = [
        _init("wc", (4, 1, 3, 3)),
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "mean"),
        numpy_helper.from_array(np.ones(4, np.float32), "var"),
        numpy_helper.from_array(np.array([1, 64], np.int64), "shape"),
        _init("w", (16, 64)),
        numpy_helper.from_array(np.zeros(16, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="gemm", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", F32, [1, 1, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", F32, [1, 16])], inits, opset=7, ir=3)


def test_upgrade_opset_raises_the_ir_version_of_an_ir3_model() -> None:
    source = ir3_model()
    model = onnx.ModelProto()
    model.CopyFrom(source)
    result = UpgradeOpset().call(model)
    assert result.modified
    assert result.model.ir_version == helper.find_min_ir_version_for(list(result.model.opset_import))
    assert [i.name for i in result.model.graph.input] == ["x"]
    onnx.checker.check_model(result.model, full_check=True)
    x = RNG.standard_normal((1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _run(result.model, {"x": x})[0], _run(source, {"x": x})[0], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("ir", [3, 7])  # 7: initializers listed as inputs are overridable defaults
def test_static_converts_models_listing_initializers_as_inputs(tmp_path, ir) -> None:  # noqa: ANN001
    source = ir3_model()
    if ir != 3:
        source.ir_version = ir
        source.opset_import[0].version = 13
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(1, 1, 8, 8)] * 8)
    if ir == 3:  # once through the CLI, for the exit code
        proc = quantcli(
            "convert", path, "--calib", calib, "-o", tmp_path / "q.onnx", "--no-speed-plan", cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
    else:
        result = convert(
            ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False)
        )
        assert any(w.startswith("wc, scale, bias and 5 more: initializers listed") for w in result.warnings)
    out = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert [i.name for i in out.graph.input] == ["x"] and out.ir_version >= 7
    assert "QuantizeLinear" in _ops(tmp_path / "q.onnx")
    feeds = [{"x": RNG.standard_normal((1, 1, 8, 8)).astype(np.float32)} for _ in range(2)]
    for f in feeds:
        assert _cosine(_run(path, f)[0], _run(tmp_path / "q.onnx", f)[0]) > 0.99


def test_integer_io_on_a_float16_model_gives_integer_inputs_and_outputs(tmp_path) -> None:
    source = conv_model(F16)
    path = tmp_path / "m.onnx"
    onnx.save(source, path)
    calib = _samples(tmp_path / "calib", [(1, 3, 8, 8)] * 8, np.float16)
    result = convert(
        ConvertOptions(model=path, output=tmp_path / "q.onnx", calib=calib, speed_plan=False, integer_io=True)
    )
    assert set(result.io_quantization) == {"x", "y"}
    assert result.agreement.outputs[0].cosine_min > 0.99
    out = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(out, full_check=True)
    assert [v.type.tensor_type.elem_type for v in (*out.graph.input, *out.graph.output)] == [
        TensorProto.UINT8
    ] * 2
