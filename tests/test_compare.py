"""`quantcli compare`: figures checked against numpy, thresholds, per-layer ranking, I/O conversion,
JSON schema, markdown and JUnit outputs."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import DATA, SAMPLES
from onnx import helper, numpy_helper

from quantcli.calibration.data import find_samples, iter_samples
from quantcli.cli import main
from quantcli.compare import CompareOptions, compare
from quantcli.errors import UsageError
from quantcli.graph import GraphIndex
from quantcli.io_match import IO_QUANTIZATION_KEY
from quantcli.report.compare import COMPARE_JSON_SCHEMA
from quantcli.runtime import make_session
from quantcli.thresholds import Thresholds, evaluate
from quantcli.verify import Agreement, ErrorAccumulator, OutputMetrics

CNN = SAMPLES / "digits_cnn.onnx"
CNN_EVAL = DATA / "digits_cnn" / "eval"


def run_cli(*args: Any, env: dict[str, str] | None = None):  # noqa: ANN201 - click Result
    return CliRunner().invoke(main, ["compare", *map(str, args)], env=env, catch_exceptions=False)


def failed_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "check failed" in line]


# -- a tiny JSON Schema validator (the subset COMPARE_JSON_SCHEMA uses; no extra test dependency) --


def validate(value: Any, schema: dict[str, Any], path: str = "$") -> None:
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(value, option, path)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{path}: matches no alternative: {errors}")
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    if kind is not None:
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        }
        assert checks[kind](value), f"{path}: {value!r} is not {kind}"
    if "minimum" in schema:
        assert value >= schema["minimum"], f"{path}: {value} < {schema['minimum']}"
    if "maximum" in schema:
        assert value <= schema["maximum"], f"{path}: {value} > {schema['maximum']}"
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        for key, item in value.items():
            if key in props:
                validate(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{path}: unexpected {key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(item, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{k}]")


# -- helpers: deliberately broken models --------------------------------------------------------


def break_conv_weight_scale(source: Path, target: Path, conv_index: int = 1) -> str:
    """Copy a QDQ model with the weight scale of its `conv_index`-th Conv made 100x too small;
    returns that Conv's name."""
    model = onnx.load(str(source))
    index = GraphIndex(model.graph)
    conv = [n for n in model.graph.node if n.op_type == "Conv"][conv_index]
    dequantize = index.producer[conv.input[1]]
    assert dequantize.op_type == "DequantizeLinear"
    scale = index.initializers[dequantize.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) / 100, scale.name))
    onnx.save(model, str(target))
    return conv.name


@pytest.fixture(scope="module")
def ort_cnn_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_cnn quantized by onnxruntime's own quantize_static (QDQ), whose tensor names differ."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    out = tmp_path_factory.mktemp("ort") / "digits_cnn_ort_int8.onnx"
    samples = iter_samples(find_samples(DATA / "digits_cnn" / "calib")[:32], _specs(CNN))

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(samples, None)

    quantize_static(
        str(CNN),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def _specs(path: Path):  # noqa: ANN202
    from quantcli.calibration.data import InputSpec

    return InputSpec.from_model(onnx.load(str(path)))


# -- figures --------------------------------------------------------------------------------------


def test_a_model_compared_with_itself_is_exact() -> None:
    result = run_cli(
        CNN, CNN, "--data", CNN_EVAL, "--samples", 20, "--min-cosine", 0.999999, "--min-sqnr", 100
    )
    assert result.exit_code == 0, result.stderr
    assert "SQNR" in result.stdout and "2 passed, 0 failed" in result.stdout
    r = compare(CompareOptions(reference=CNN, candidate=CNN, data=CNN_EVAL, samples=20))
    (o,) = r.agreement.outputs
    assert o.cosine_mean == pytest.approx(1.0, abs=1e-12) and o.cosine_min == pytest.approx(1.0, abs=1e-12)
    assert math.isinf(o.sqnr_db) or o.sqnr_db > 100
    assert o.max_abs_error == 0.0 and o.top1_agreement == 1.0 and o.top5_overlap == 1.0
    assert r.size_ratio == 1.0 and r.passed


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
def test_figures_match_numpy_on_the_same_outputs(converted, name: str) -> None:
    source, quantized = SAMPLES / f"{name}.onnx", converted[name].output
    data = DATA / name / "eval"
    r = compare(CompareOptions(reference=source, candidate=quantized, data=data, samples=60))

    refs = find_samples(data)[:60]
    labels = np.load(data / "labels.npy")[:60]
    reference, candidate = make_session(source), make_session(quantized)
    pairs = [
        (reference.run(None, s)[0].astype(np.float64), candidate.run(None, s)[0].astype(np.float64))
        for s in iter_samples(refs, _specs(source))
    ]
    ref = np.concatenate([p[0] for p in pairs])
    cand = np.concatenate([p[1] for p in pairs])
    cos = [np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in pairs]
    diff = ref - cand
    top5 = [
        len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(ref, cand, strict=True)
    ]

    (o,) = r.agreement.outputs
    assert o.samples == 60
    assert o.cosine_mean == pytest.approx(np.mean(cos), rel=1e-9)
    assert o.cosine_min == pytest.approx(np.min(cos), rel=1e-9)
    assert o.max_abs_error == pytest.approx(np.max(np.abs(diff)), rel=1e-9)
    assert o.mean_abs_error == pytest.approx(np.mean(np.abs(diff)), rel=1e-9)
    assert o.relative_error == pytest.approx(np.linalg.norm(diff) / np.linalg.norm(ref), rel=1e-9)
    assert o.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum(diff**2)), rel=1e-9)
    assert o.top1_agreement == pytest.approx(np.mean(ref.argmax(1) == cand.argmax(1)))
    assert o.top5_overlap == pytest.approx(np.mean(top5))
    assert r.agreement.reference_accuracy == pytest.approx(np.mean(ref.argmax(1) == labels))
    assert r.agreement.candidate_accuracy == pytest.approx(np.mean(cand.argmax(1) == labels))
    # A static INT8 conversion of these models is close, and 3-4x smaller.
    assert o.cosine_mean > 0.999 and o.sqnr_db > 25 and r.size_ratio < 0.35
    assert r.reference.parameter_bytes["float32"] > 4 * r.candidate.parameter_bytes.get("float32", 0)
    assert r.candidate.parameter_bytes["int8"] > 0


# -- thresholds -----------------------------------------------------------------------------------

# (option, the figure it bounds as compare_to_dict names it, how to make it per-output)
BOUNDS = [
    ("--min-cosine", lambda d: d["outputs"][0]["cosine_mean"], "logits="),
    ("--max-abs-error", lambda d: d["outputs"][0]["max_abs_error"], ""),
    ("--min-sqnr", lambda d: d["outputs"][0]["sqnr_db"], "logits="),
    ("--min-top1-agreement", lambda d: d["outputs"][0]["top1_agreement"], ""),
    ("--max-accuracy-drop", lambda d: d["accuracy"]["drop"], None),
    ("--max-size-ratio", lambda d: d["size"]["ratio"], None),
]


@pytest.fixture(scope="module")
def broken_cnn(converted, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The quantcli INT8 CNN with one Conv's weight scale 100x too small: top-1 and accuracy drop."""
    target = tmp_path_factory.mktemp("broken") / "digits_cnn_int8_broken.onnx"
    return target, break_conv_weight_scale(converted["digits_cnn"].output, target)


@pytest.mark.parametrize("option,figure,prefix", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_threshold_just_past_the_figure_fails_and_just_short_passes(
    broken_cnn, option, figure, prefix
) -> None:
    model, _ = broken_cnn
    base = [CNN, model, "--data", CNN_EVAL, "--samples", 40]
    measured = run_cli(*base, "--json")
    assert measured.exit_code == 0, measured.stderr
    value = figure(json.loads(measured.stdout))
    lower = option.startswith("--min")
    step = max(abs(value) * 1e-6, 1e-9)
    failing, passing = (value + step, value - step) if lower else (value - step, value + step)
    arg = (prefix or "") + repr(failing)
    result = run_cli(*base, option, arg)
    assert result.exit_code == 1, result.stderr
    (line,) = failed_lines(result.stderr)
    assert f"({option})" in line and ("<" if lower else ">") in line
    shown = [float(x) for x in line.replace("(", " ").split() if _is_number(x)]
    assert shown[-2] == pytest.approx(value, rel=1e-5) and shown[-1] == pytest.approx(failing, rel=1e-5)
    if prefix:
        assert "output logits" in line
    result = run_cli(*base, option, (prefix or "") + repr(passing))
    assert result.exit_code == 0, result.stderr
    assert failed_lines(result.stderr) == [] and "1 passed, 0 failed" in result.stdout


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_thresholds_are_a_library_with_per_output_defaults() -> None:
    agreement = Agreement(
        [
            OutputMetrics("logits", 10, cosine_mean=0.998, sqnr_db=31.0, top1_agreement=0.97),
            OutputMetrics("embedding", 10, cosine_mean=0.990, sqnr_db=25.0),
        ],
        10,
        reference_accuracy=0.95,
        candidate_accuracy=0.93,
    )
    thresholds = Thresholds(min_cosine={"": 0.995, "embedding": 0.98}, min_sqnr=30, max_accuracy_drop=0.01)
    checks = evaluate(thresholds, agreement, size_ratio=0.3)
    summary = [(c.option, c.output, c.passed) for c in checks]
    assert summary == [
        ("min-cosine", "logits", True),
        ("min-cosine", "embedding", True),  # its own bound, not the default
        ("min-sqnr", "logits", True),
        ("min-sqnr", "embedding", False),
        ("max-accuracy-drop", None, False),
    ]
    assert checks[-1].message == "accuracy drop 0.02 > 0.01 (--max-accuracy-drop)"
    # The default applies only where it is measured; a named output without the figure is an error.
    assert len(evaluate(Thresholds(min_top1_agreement=0.9), agreement)) == 1
    with pytest.raises(UsageError, match="not measured"):
        evaluate(Thresholds(min_top1_agreement={"embedding": 0.9}), agreement)
    with pytest.raises(UsageError, match="latency was not timed"):
        evaluate(Thresholds(max_latency_ratio=1.0), agreement)


def test_overflow_and_nan_are_figures_not_crashes() -> None:
    acc = ErrorAccumulator("y")
    acc.update(np.array([[1.0, 2.0]], np.float32), np.array([[np.inf, 2.0]], np.float32))
    m = acc.result()
    assert m.sqnr_db == -math.inf and m.max_abs_error == math.inf
    acc.update(np.array([[1.0, 2.0]], np.float32), np.array([[np.nan, 2.0]], np.float32))
    assert math.isnan(acc.result().sqnr_db)
    with pytest.raises(UsageError, match="shape"):
        acc.update(np.zeros((1, 2), np.float32), np.zeros((2, 1), np.float32))


def test_latency_ratio_threshold_and_interleaved_timing(converted) -> None:
    quantized = converted["digits_cnn"].output
    ok = run_cli(CNN, quantized, "--data", CNN_EVAL, "--samples", 5, "--max-latency-ratio", 1000, "--json")
    assert ok.exit_code == 0, ok.stderr
    latency = json.loads(ok.stdout)["latency"]
    assert latency["rounds"] == 30 and latency["threads"] == 1 and latency["warmup"] >= 1
    assert latency["ratio"] == pytest.approx(latency["candidate_ms"] / latency["reference_ms"])
    bad = run_cli(CNN, quantized, "--data", CNN_EVAL, "--samples", 5, "--max-latency-ratio", 1e-6)
    assert bad.exit_code == 1 and "(--max-latency-ratio)" in failed_lines(bad.stderr)[0]
    assert "ratio" in bad.stdout and "interleaved" in bad.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--min-cosine", "nosuch=0.9"], "no output 'nosuch'"),
        (["--min-cosine", "2"], "out of range"),
        (["--max-size-ratio", "0"], "greater than 0"),
        (["--min-cosine", "0.9", "--min-cosine", "0.95"], "given twice"),
        (["--max-accuracy-drop", "0.01", "--data", "UNLABELLED"], "labels"),
        (["--markdown", "-"], "GITHUB_STEP_SUMMARY"),
    ],
)
def test_bad_thresholds_and_options_are_exit_2(
    converted, tmp_path: Path, args: list[str], needle: str
) -> None:
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for f in sorted(CNN_EVAL.glob("*.npz"))[:3]:
        (unlabelled / f.name).write_bytes(f.read_bytes())
    args = [unlabelled if a == "UNLABELLED" else a for a in args]
    if "--data" not in args:
        args += ["--data", CNN_EVAL]
    result = run_cli(
        CNN, converted["digits_cnn"].output, "--samples", 3, *args, env={"GITHUB_STEP_SUMMARY": ""}
    )
    assert result.exit_code == 2, result.stdout + result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_models_that_do_not_match_are_exit_2() -> None:
    result = run_cli(CNN, SAMPLES / "digits_mlp.onnx")
    assert result.exit_code == 2
    assert "input 'input'" in result.stderr and "shape" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- per-layer ------------------------------------------------------------------------------------


def test_per_layer_ranks_the_broken_layer_first_in_a_quantcli_model(broken_cnn) -> None:
    model, conv = broken_cnn
    r = compare(CompareOptions(reference=CNN, candidate=model, data=CNN_EVAL, samples=20, per_layer=True))
    first, second = r.per_layer.layers[:2]
    # quantcli fused the Conv with its BatchNormalization: the Conv writes the BN output's name.
    assert first.candidate_node == conv and first.candidate_op_type == "Conv"
    assert first.op_type == "BatchNormalization"
    assert first.metrics.sqnr_db < 5 and first.input_sqnr_db > 30 and first.added_db > second.added_db + 20
    assert {t for t, *_ in r.per_layer.unmatched} == {
        "/block1/block1.0/Conv_output_0",
        "/block2/block2.0/Conv_output_0",
        "/block3/block3.0/Conv_output_0",
    }


def test_per_layer_ranks_the_broken_layer_first_in_an_onnxruntime_model(ort_cnn_int8, tmp_path: Path) -> None:
    broken = tmp_path / "ort_broken.onnx"
    conv = break_conv_weight_scale(ort_cnn_int8, broken)
    result = run_cli(CNN, broken, "--data", CNN_EVAL, "--samples", 20, "--per-layer")
    assert result.exit_code == 0, result.stderr
    table = result.stdout.split("rank  layer")[1].splitlines()
    assert table[1].split()[:3] == ["1", conv, "Conv"]
    assert "run op by op" in result.stdout and "real, fused models" in result.stdout
    r = compare(CompareOptions(reference=CNN, candidate=broken, data=CNN_EVAL, samples=20, per_layer=True))
    first = r.per_layer.layers[0]
    # onnxruntime names the DequantizeLinear output itself; the float name stays on the Conv output.
    assert first.tensor == "/block2/block2.0/Conv_output_0" and first.candidate_tensor != first.tensor
    assert first.candidate_node == conv and first.added_db > 20
    intact = compare(
        CompareOptions(reference=CNN, candidate=ort_cnn_int8, data=CNN_EVAL, samples=20, per_layer=True)
    )
    assert all(e.metrics.sqnr_db > 20 for e in intact.per_layer.layers)


def test_per_layer_on_a_transformer_compares_every_layer(converted) -> None:
    vit = SAMPLES / "digits_vit.onnx"
    r = compare(
        CompareOptions(
            reference=vit,
            candidate=converted["digits_vit"].output,
            data=DATA / "digits_vit" / "eval",
            samples=10,
            per_layer=True,
        )
    )
    layers = r.per_layer.layers
    assert len(layers) > 80 and not r.per_layer.unmatched
    assert {e.op_type for e in layers} >= {"MatMul", "Softmax", "LayerNormalization", "Add"}
    assert all(15 < e.metrics.sqnr_db for e in layers)
    assert [e.added_db for e in layers] == sorted((e.added_db for e in layers), reverse=True)


# -- data, I/O conversion -------------------------------------------------------------------------


def test_random_data_is_flagged(converted) -> None:
    result = run_cli(CNN, converted["digits_cnn"].output, "--samples", 4)
    assert result.exit_code == 0, result.stderr
    assert "warning: no --data" in result.stderr and "random" in result.stdout
    again = run_cli(CNN, converted["digits_cnn"].output, "--samples", 4, "--json")
    data = json.loads(again.stdout)
    assert data["data"] == {"source": "random", "path": None, "samples": 4, "labels": False, "seed": 0}
    # The same seed gives the same samples, so the same figures (normal noise is far from the
    # digits' pixel range: the figure is much worse than on real data, which is the point of the warning).
    r = compare(CompareOptions(reference=CNN, candidate=converted["digits_cnn"].output, samples=4))
    assert data["outputs"][0]["cosine_mean"] == r.agreement.outputs[0].cosine_mean < 0.999


def _affine_model(x_type: int, y_type: int, metadata: dict[str, dict[str, float]] | None) -> onnx.ModelProto:
    """y = 2x + 1 on [1, 4]; integer inputs/outputs go through DequantizeLinear/QuantizeLinear."""
    nodes, inits = [], [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    x, y = "x", "y"
    if x_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "xs")]
        inits += [
            numpy_helper.from_array(
                np.array(
                    128 if x_type == onnx.TensorProto.UINT8 else 0, helper.tensor_dtype_to_np_dtype(x_type)
                ),
                "xz",
            )
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]))
        x = "xf"
    elif x_type == onnx.TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=onnx.TensorProto.FLOAT))
        x = "xf"
    nodes += [helper.make_node("Mul", [x, "two"], ["m"]), helper.make_node("Add", ["m", "one"], ["yf"])]
    if y_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8):
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "ys")]
        inits += [
            numpy_helper.from_array(
                np.array(
                    128 if y_type == onnx.TensorProto.UINT8 else 0, helper.tensor_dtype_to_np_dtype(y_type)
                ),
                "yz",
            )
        ]
        nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], [y]))
    elif y_type == onnx.TensorProto.FLOAT16:
        nodes.append(helper.make_node("Cast", ["yf"], [y], to=onnx.TensorProto.FLOAT16))
    else:
        nodes.append(helper.make_node("Identity", ["yf"], [y]))
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", x_type, ["batch", 4])],
        [helper.make_tensor_value_info("y", y_type, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        helper.set_model_props(model, {IO_QUANTIZATION_KEY: json.dumps(metadata)})
    return model


def test_float16_and_integer_io_are_compared_in_float32(tmp_path: Path) -> None:
    f32, u8, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT16
    paths = {}
    for name, model in {
        "float": _affine_model(f32, f32, None),
        "half": _affine_model(f16, f16, None),
        "integer": _affine_model(
            u8, u8, {"x": {"scale": 0.05, "zero_point": 128}, "y": {"scale": 0.1, "zero_point": 128}}
        ),
        "integer-unrecorded": _affine_model(u8, u8, None),
    }.items():
        paths[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, str(paths[name]))
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for k in range(8):
        np.savez(data / f"s{k}.npz", x=rng.uniform(-2, 2, (1, 4)).astype(np.float32))

    half = compare(
        CompareOptions(reference=paths["float"], candidate=paths["half"], data=data, per_layer=True)
    )
    assert half.agreement.outputs[0].sqnr_db > 55 and [p.converted for p in half.io.inputs] == [True]
    integer = compare(CompareOptions(reference=paths["float"], candidate=paths["integer"], data=data))
    o = integer.agreement.outputs[0]
    # Input rounding (scale 0.05, doubled) plus output rounding (scale 0.1): at most 0.1 apart.
    assert 0 < o.max_abs_error <= 0.1 + 1e-6 and o.cosine_min > 0.999
    result = run_cli(paths["float"], paths["integer-unrecorded"], "--data", data)
    assert result.exit_code == 2 and IO_QUANTIZATION_KEY in result.stderr


# -- outputs: JSON schema, markdown, JUnit ---------------------------------------------------------


def test_json_validates_against_the_documented_schema(converted, tmp_path: Path) -> None:
    for args in (
        [CNN, converted["digits_cnn"].output, "--data", CNN_EVAL, "--samples", 20, "--per-layer", "--latency",
         "--min-cosine", 0.99, "--max-size-ratio", 0.01, "--min-top1-agreement", "logits=0.9"],
        [CNN, CNN, "--samples", 3],
    ):  # fmt: skip
        result = run_cli(*args, "--json")
        data = json.loads(result.stdout)  # one object, nothing else on stdout
        validate(data, COMPARE_JSON_SCHEMA)
        assert result.exit_code == data["exit_code"] and data["passed"] == (data["exit_code"] == 0)
    assert data["outputs"][0]["sqnr_db"] == "inf" and data["per_layer"] is None and data["latency"] is None
    full = json.loads(
        run_cli(
            *[
                CNN,
                converted["digits_cnn"].output,
                "--data",
                CNN_EVAL,
                "--samples",
                20,
                "--per-layer",
                "--json",
            ]
        ).stdout
    )
    layers = full["per_layer"]["layers"]
    assert [x["rank"] for x in layers] == list(range(1, len(layers) + 1))
    assert {"input", "/head/head.3/Gemm"} <= {x["node"] for x in layers}
    with pytest.raises(AssertionError):  # the validator does reject a wrong object
        validate({**full, "outputs": [{"name": "logits"}]}, COMPARE_JSON_SCHEMA)


def test_markdown_and_junit(converted, tmp_path: Path) -> None:
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    junit = tmp_path / "checks.xml"
    result = run_cli(
        CNN, converted["digits_cnn"].output, "--data", CNN_EVAL, "--samples", 10,
        "--min-cosine", 0.99, "--max-size-ratio", 0.01, "--markdown", "-", "--junit", junit,
        env={"GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert result.exit_code == 1
    text = summary.read_text()
    assert text.startswith("earlier step\n### quantcli compare") and "1 of 2 checks failed" in text
    assert "| logits |" in text and "**FAIL**" in text
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["--min-cosine logits", "--max-size-ratio"]
    assert [c.find("failure") is not None for c in cases] == [False, True]
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert "(--max-size-ratio)" in cases[1].find("failure").get("message")
    own = tmp_path / "own.md"
    assert run_cli(CNN, CNN, "--samples", 2, "--markdown", own).exit_code == 0
    assert "no thresholds set" in own.read_text()
