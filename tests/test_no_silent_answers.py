"""No silent wrong answers (issue #17), through the CLI: empty and big-endian samples, plans validated
on load, NaN/inf weights, inf/NaN outputs reported for what they are, already-quantized and
already-half inputs, zero-node models, and exit codes that mean what they say. Every failure is one
line on stderr and no numpy/Python warning text reaches stderr."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, quantcli, sha256
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(17)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def mlp(path: Path, w1: np.ndarray | None = None, w2: np.ndarray | None = None, batch: int | str = 1) -> Path:
    """x [batch, 64] -> MatMul w1 [64, 32] -> Add -> Relu -> MatMul w2 [32, 4] -> y."""
    w1 = RNG.normal(size=(64, 32)).astype(np.float32) if w1 is None else w1
    w2 = RNG.normal(size=(32, 4)).astype(np.float32) if w2 is None else w2
    elem = TensorProto.FLOAT16 if w1.dtype == np.float16 else TensorProto.FLOAT
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
            helper.make_node("Relu", ["hb"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", elem, [batch, 64])],
        [helper.make_tensor_value_info("y", elem, [batch, 4])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(RNG.normal(size=32).astype(w1.dtype), "b"),
        ],
    )
    return _save(graph, path)


def samples(
    directory: Path, n: int = 6, shape: tuple[int, ...] = (1, 64), dtype: str = "<f4", *, npz: bool = False
) -> Path:
    directory.mkdir()
    for i in range(n):
        x = RNG.normal(size=shape).astype(dtype)
        if npz:
            np.savez(directory / f"{i}.npz", x=x)
        else:
            np.save(directory / f"{i}.npy", x)
    return directory


def one_error_line(run, code: int, *needles: str) -> str:  # noqa: ANN001 - CompletedProcess
    """The run's single stderr line, after checking the exit code and that it names each needle."""
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code and len(lines) == 1, (run.returncode, run.stderr)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Warning" not in run.stderr and "Traceback" not in run.stderr
    return lines[0]


def no_warnings(run) -> None:  # noqa: ANN001
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr and "Traceback" not in run.stderr, run.stderr


# 1. Empty samples ------------------------------------------------------------------------------


def test_all_empty_samples_are_refused(tmp_path: Path) -> None:
    model = mlp(tmp_path / "m.onnx", batch="N")
    calib = samples(tmp_path / "calib", shape=(0, 64))
    run = quantcli("convert", model, "--calib", calib, "-o", tmp_path / "q.onnx", cwd=tmp_path)
    one_error_line(run, 2, str(calib), "all 6 samples are empty", "[0, 64]")
    assert not (tmp_path / "q.onnx").exists()


def test_some_empty_samples_are_refused_naming_the_first(tmp_path: Path) -> None:
    """Refused rather than skipped: skipping would calibrate (and evaluate) on fewer samples than
    given, and shift which samples are held out, without the user knowing."""
    model = mlp(tmp_path / "m.onnx", batch="N")
    calib = samples(tmp_path / "calib", n=5)
    np.save(calib / "2.npy", np.zeros((0, 64), np.float32))
    run = quantcli(
        "convert", model, "--mode", "fp16", "--calib", calib, "-o", tmp_path / "q.onnx", cwd=tmp_path
    )
    one_error_line(run, 2, str(calib), "1 of 5 samples are empty", "2.npy")
    run = quantcli("compare", model, model, "--data", calib, cwd=tmp_path)
    one_error_line(run, 2, "1 of 5 samples are empty")


# 9. Big-endian samples -------------------------------------------------------------------------


@pytest.mark.parametrize("npz", [False, True])
def test_big_endian_samples_give_the_same_model(tmp_path: Path, npz: bool) -> None:
    model = mlp(tmp_path / "m.onnx")
    little = samples(tmp_path / "little", npz=npz)
    big = tmp_path / "big"
    big.mkdir()
    for f in sorted(little.iterdir()):
        if npz:
            with np.load(f) as data:
                np.savez(big / f.name, x=data["x"].astype(">f4"))
        else:
            np.save(big / f.name, np.load(f).astype(">f4"))
    for d in (little, big):
        no_warnings(quantcli("convert", model, "--calib", d, "-o", tmp_path / f"{d.name}.onnx", cwd=tmp_path))
    assert sha256(tmp_path / "little.onnx") == sha256(tmp_path / "big.onnx")


# 2. Plans validated on load --------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("plan")
    model = mlp(d / "m.onnx")
    calib = samples(d / "calib")
    plan = d / "plan.json"
    run = quantcli(
        "convert", model, "--calib", calib, "-o", d / "q.onnx", "--save-plan", plan, "--no-speed-plan", cwd=d
    )
    assert run.returncode == 0, run.stderr
    return model, json.loads(plan.read_text())


def _bad_zero_point(d: dict) -> None:
    act = next(k for k, v in d["tensors"].items() if v["role"] == "activation" and v["dtype"] == "uint8")
    d["tensors"][act]["zero_point"] = [300]


def _weight(d: dict) -> dict:
    return d["tensors"]["w1"]


@pytest.mark.parametrize(
    "edit, needles",
    [
        (_bad_zero_point, ["zero_point[0] 300", "uint8's range [0, 255]"]),
        (lambda d: _weight(d)["scale"].__setitem__(3, "abc"), ["tensor 'w1'", "scale[3]", "'abc'"]),
        (lambda d: _weight(d)["scale"].__setitem__(0, -0.5), ["tensor 'w1'", "scale[0]", "> 0"]),
        (lambda d: _weight(d)["scale"].__setitem__(0, float("nan")), ["tensor 'w1'", "scale[0]", "finite"]),
        (lambda d: _weight(d)["zero_point"].__setitem__(0, 1.5), ["tensor 'w1'", "zero_point[0]", "integer"]),
        (
            lambda d: _weight(d)["zero_point"].__setitem__(0, 200),
            ["tensor 'w1'", "zero_point[0] 200", "int8"],
        ),
        (
            lambda d: (_weight(d)["scale"].pop(), _weight(d)["zero_point"].pop()),
            ["tensor 'w1'", "31 scales", "32 channels"],
        ),
        (lambda d: _weight(d).update(axis=5), ["tensor 'w1'", "axis 5", "rank 2"]),
        (lambda d: d["nodes"][0].update(name="not_there"), ["node 'not_there'", "no node of that name"]),
        (lambda d: d["nodes"][0].update(op_type="Conv"), ["node 'mm1'", "op_type Conv", "MatMul"]),
        (lambda d: d["nodes"][0].update(precision="int3"), ["node 'mm1'", "precision", "'int3'"]),
        (lambda d: d["nodes"][0].update(precision="fp16"), ["node 'mm1'", "precision fp16", "--mode static"]),
        (lambda d: d["nodes"][0].update(quantized_inputs=["x", "w1", "zz"]), ["node 'mm1'", "'zz'"]),
        (
            lambda d: d["nodes"][0].update(quantized_inputs=[], quantized_outputs=[]),
            ["node 'mm1'", "are empty"],
        ),
        (lambda d: d["tensors"].update(ghost=dict(_weight(d))), ["tensor 'ghost'", "no tensor of that name"]),
        (lambda d: _weight(d).update(dtype="int64"), ["tensor 'w1'", "dtype", "'int64'"]),
        (lambda d: _weight(d).update(role="kernel"), ["tensor 'w1'", "role", "'kernel'"]),
        (lambda d: d.update(mode="turbo"), ["mode must be one of", "'turbo'"]),
        (lambda d: d.update(schema_version=3), ["schema_version 3"]),
        (
            lambda d: d["nodes"][0].update(form="rows"),
            ["node 'mm1'", "form rows is for int8 Gather nodes only"],
        ),
        (lambda d: d["nodes"][0].update(form="zigzag"), ["node 'mm1'", "form", "'zigzag'"]),
        (lambda d: d["config"].update(per_channel="yes"), ["config.per_channel", "true or false"]),
        (lambda d: d["config"].update(turbo=True), ["config", "unknown field 'turbo'"]),
        (lambda d: d.pop("tensors"), ["field 'tensors' is missing"]),
    ],
)
def test_bad_plans_are_one_line_exit_2(saved_plan, tmp_path: Path, edit, needles) -> None:  # noqa: ANN001
    model, data = saved_plan
    data = json.loads(json.dumps(data))
    edit(data)
    plan = tmp_path / "edited.json"
    plan.write_text(json.dumps(data))
    out = tmp_path / "q.onnx"
    run = quantcli("convert", model, "--plan", plan, "-o", out, cwd=tmp_path)
    one_error_line(run, 2, str(plan), *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "mode", ["static", "dynamic", "weights-int8", "weights-int4", "fp16", "bf16", "mixed"]
)
def test_every_plan_the_tool_writes_replays(tmp_path: Path, mode: str) -> None:
    model = mlp(tmp_path / "m.onnx")
    calib = samples(tmp_path / "calib")
    first, again, plan = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "plan.json"
    no_warnings(
        quantcli(
            "convert", model, "--mode", mode, "--calib", calib, "-o", first, "--save-plan", plan, cwd=tmp_path
        )
    )
    no_warnings(quantcli("convert", model, "--plan", plan, "-o", again, cwd=tmp_path))
    assert sha256(first) == sha256(again)


def test_a_plan_quantizing_a_nan_weight_is_refused(saved_plan, tmp_path: Path) -> None:  # noqa: ANN001
    _, data = saved_plan
    w1 = RNG.normal(size=(64, 32)).astype(np.float32)
    w1[5, 7] = np.nan
    model = mlp(tmp_path / "nan.onnx", w1=w1)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data))
    run = quantcli("convert", model, "--plan", plan, "-o", tmp_path / "q.onnx", cwd=tmp_path)
    one_error_line(run, 2, str(plan), "tensor 'w1'", "NaN/inf", "node 'mm1'")


# 3. NaN/inf weights ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, bad",
    [(m, np.nan) for m in ("static", "dynamic", "weights-int8", "weights-int4", "mixed")]
    + [("static", np.inf), ("weights-int8", -np.inf)],
)
def test_nonfinite_weights_stay_float_with_a_warning(tmp_path: Path, mode: str, bad: float) -> None:
    w1 = RNG.normal(size=(64, 32)).astype(np.float32)
    w1[3, 4] = bad
    model = mlp(tmp_path / "m.onnx", w1=w1)
    calib = samples(tmp_path / "calib")
    out, plan = tmp_path / "q.onnx", tmp_path / "plan.json"
    run = quantcli(
        "convert",
        model,
        "--mode",
        mode,
        "--calib",
        calib,
        "-o",
        out,
        "--save-plan",
        plan,
        "--json",
        cwd=tmp_path,
    )
    no_warnings(run)
    report = json.loads(run.stdout)
    assert "nonfinite-weights" in report["warning_codes"]
    (line,) = [w for w in report["warnings"] if w.startswith("w1:")]
    assert "1 of 2048 values are NaN or inf" in line and "mm1" in line
    node = next(n for n in json.loads(plan.read_text())["nodes"] if n["name"] == "mm1")
    assert node["precision"] == "float" and "w1 holds 1 NaN/inf value" in node["reason"]
    kept = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    np.testing.assert_array_equal(kept["w1"], w1)  # the float weight, its NaN/inf included
    if mode in ("dynamic", "weights-int8"):  # the other weight is still quantized
        assert "w2" not in kept


# 4 and 5. inf/NaN outputs: said for what they are, no RuntimeWarning ---------------------------


def inf_output_model(path: Path) -> Path:
    """y = x @ w where w's first column is 3e38: the float model returns inf/-inf in y[:, 0]."""
    w = RNG.normal(size=(64, 4)).astype(np.float32)
    w[:, 0] = 3e38
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


@pytest.mark.parametrize("mode", ["static", "dynamic", "mixed", "fp16"])
def test_a_float_model_that_returns_inf_is_reported_as_such(tmp_path: Path, mode: str) -> None:
    model = inf_output_model(tmp_path / "m.onnx")
    calib = samples(tmp_path / "calib")
    run = quantcli(
        "convert",
        model,
        "--mode",
        mode,
        "--calib",
        calib,
        "--eval",
        calib,
        "-o",
        tmp_path / "q.onnx",
        "--json",
        cwd=tmp_path,
    )
    no_warnings(run)
    report = json.loads(run.stdout)
    assert "nonfinite-reference" in report["warning_codes"], report["warnings"]
    assert "nonfinite-output" not in report["warning_codes"]
    (line,) = [w for w in report["warnings"] if w.startswith("output y")]
    assert "the float model itself returns inf or NaN on 6 of 6 samples" in line
    assert "where the float model does not" not in line
    output = report["accuracy"]["outputs"][0]
    assert output["cosine_mean"] is not None and output["cosine_mean"] > 0.99  # the finite columns
    run = quantcli("compare", model, tmp_path / "q.onnx", "--data", calib, cwd=tmp_path)
    assert run.returncode == 0 and "Warning" not in run.stderr
    assert "the reference model itself returns inf or NaN on 6 of 6 samples" in run.stderr


@pytest.mark.parametrize(
    "mode, case",
    [
        ("static", "zero-data"),
        ("mixed", "zero-data"),
        ("fp16", "zero-data"),
        ("static", "zero-weights"),
        ("dynamic", "zero-weights"),
    ],
)
def test_degenerate_models_and_data_keep_stderr_clean(tmp_path: Path, mode: str, case: str) -> None:
    zero = case == "zero-weights"
    model = mlp(
        tmp_path / "m.onnx",
        *((np.zeros((64, 32), np.float32), np.zeros((32, 4), np.float32)) if zero else ()),
    )
    calib = samples(tmp_path / "calib")
    if not zero:
        for f in calib.iterdir():
            np.save(f, np.zeros((1, 64), np.float32))
    run = quantcli(
        "convert", model, "--mode", mode, "--calib", calib, "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path
    )
    no_warnings(run)
    # all-zero calibration data says nothing about the codes real inputs reach: no pair may saturate
    assert "u8s8-saturation" not in json.loads(run.stdout)["warning_codes"]
    run = quantcli("compare", model, tmp_path / "q.onnx", "--per-layer", cwd=tmp_path)
    no_warnings(run)


# 6. Already quantized, already half ------------------------------------------------------------


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("qdq")
    model = mlp(d / "m.onnx")
    run = quantcli(
        "convert", model, "--calib", samples(d / "calib"), "-o", d / "qdq.onnx", "--no-speed-plan", cwd=d
    )
    assert run.returncode == 0, run.stderr
    run = quantcli("convert", model, "--mode", "dynamic", "-o", d / "dyn.onnx", cwd=d)
    assert run.returncode == 0, run.stderr
    return d


@pytest.mark.parametrize(
    "source, what, mode",
    [
        ("qdq.onnx", "QDQ", "static"),
        ("qdq.onnx", "QDQ", "dynamic"),
        ("qdq.onnx", "QDQ", "fp16"),
        ("dyn.onnx", "QOperator", "weights-int8"),
    ],
)
def test_already_quantized_models_are_refused(
    qdq_model: Path, tmp_path: Path, source: str, what: str, mode: str
) -> None:
    out = tmp_path / "again.onnx"
    run = quantcli(
        "convert", qdq_model / source, "--mode", mode, "--calib", qdq_model / "calib", "-o", out, cwd=tmp_path
    )
    one_error_line(run, 3, source, "already quantized", what, f"--mode {mode}")
    assert not out.exists()


@pytest.mark.parametrize("mode", ["fp16", "bf16", "dynamic", "weights-int8"])
def test_all_float16_models_are_refused_where_nothing_would_change(tmp_path: Path, mode: str) -> None:
    """fp16/bf16 have nothing to do on an all-float16 model (exit 3); the integer modes compute it
    in float32 and quantize its weights (preprocess/float32.py)."""
    model = mlp(
        tmp_path / "m16.onnx",
        RNG.normal(size=(64, 32)).astype(np.float16),
        RNG.normal(size=(32, 4)).astype(np.float16),
    )
    out = tmp_path / "q.onnx"
    run = quantcli("convert", model, "--mode", mode, "-o", out, cwd=tmp_path)
    if mode in ("fp16", "bf16"):
        one_error_line(run, 3, "m16.onnx", "float16", f"--mode {mode}")
    else:
        assert run.returncode == 0, run.stderr
        assert out.stat().st_size < model.stat().st_size  # INT8 weights instead of float16


def test_fp16_report_counts_nodes_already_float16(tmp_path: Path) -> None:
    w1 = RNG.normal(size=(64, 32)).astype(np.float32)
    w2 = RNG.normal(size=(32, 4)).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Cast", ["h"], ["h16"], name="to16", to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["h16", "w2"], ["y16"], name="mm2"),
            helper.make_node("Cast", ["y16"], ["y"], name="to32", to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = _save(graph, tmp_path / "half.onnx")
    run = quantcli("convert", model, "--mode", "fp16", "-o", tmp_path / "q.onnx", cwd=tmp_path)
    no_warnings(run)
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("compute nodes"))
    assert "1 in float32, 1 in float16 as in the input model" in line, line
    run = quantcli("convert", model, "--mode", "fp16", "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path)
    assert json.loads(run.stdout)["input_half_nodes"] == 1


# 7. Self-detected bugs exit 70; 8. zero-node models ---------------------------------------------


def test_every_quantcli_bug_message_is_raised_as_an_internal_error() -> None:
    """A message calling itself a quantcli bug must exit 70 (InternalError), never 2 or 3."""
    offenders = []
    for path in sorted((ROOT / "quantcli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Raise)
                and node.exc is not None
                and "quantcli bug" in ast.unparse(node.exc)
            ):
                call = node.exc.func if isinstance(node.exc, ast.Call) else None
                if not (isinstance(call, ast.Name) and call.id == "InternalError"):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


def test_an_input_that_fails_the_full_check_is_bad_input_not_a_bug(tmp_path: Path) -> None:
    path = mlp(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 99]))
    onnx.save(model, path)
    run = quantcli("convert", path, "--mode", "dynamic", "-o", tmp_path / "q.onnx", cwd=tmp_path)
    one_error_line(run, 2, "m.onnx", "full check", "(32) vs (99)")


@pytest.mark.parametrize("kind", ["output-is-input", "output-is-initializer"])
def test_zero_node_models(tmp_path: Path, kind: str) -> None:
    if kind == "output-is-input":
        graph = helper.make_graph(
            [],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        )
    else:
        graph = helper.make_graph(
            [],
            "g",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])],
            [numpy_helper.from_array(np.ones(4, np.float32), "c")],
        )
    model = _save(graph, tmp_path / "empty.onnx")
    for mode in ("dynamic", "fp16"):
        run = quantcli("convert", model, "--mode", mode, "-o", tmp_path / "q.onnx", cwd=tmp_path)
        one_error_line(run, 3, "empty.onnx", "no nodes", "nothing to quantize")
    run = quantcli("inspect", model, cwd=tmp_path)
    assert run.returncode == 0 and "0 nodes" in run.stdout, run.stderr
    run = quantcli("compare", model, model, "--json", cwd=tmp_path)
    assert run.returncode == 0 and "Warning" not in run.stderr, run.stderr


def test_integer_weights_dequantized_by_hand_count_as_quantized(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["wf", "s"], ["w"], name="dequantize"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [
            numpy_helper.from_array(RNG.integers(-127, 128, size=(8, 16)).astype(np.int8), "wq"),
            numpy_helper.from_array(np.float32(0.01), "s"),
        ],
    )
    model = _save(graph, tmp_path / "intw.onnx")
    run = quantcli("convert", model, "--mode", "weights-int8", "-o", tmp_path / "q.onnx", cwd=tmp_path)
    one_error_line(run, 3, "intw.onnx", "already quantized", "1 integer weight initializer")
