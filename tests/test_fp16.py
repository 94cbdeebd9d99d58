"""FP16 planner and rewriter: the sample models end to end, and tiny graphs for Casts, I/O types and overflow."""

from __future__ import annotations

import importlib.util
import platform
import sys
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli.preprocess import preprocess
from quantcli.quantize.fp16 import FP16, FP16_CPU_KERNELS, SMALL_CONSTANT, elem_types, plan_fp16
from quantcli.quantize.fp16_rewrite import rewrite_fp16
from quantcli.quantize.plan import FLOAT, NodePlan

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_NAMES = ("digits_cnn", "digits_vit", "digits_mlp")
F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


@cache
def sample(name: str) -> tuple[onnx.ModelProto, list[NodePlan], onnx.ModelProto]:
    """The preprocessed float model, its fp16 plan and the rewritten model (built once per name)."""
    model = preprocess(onnx.load(ROOT / "sample_models" / f"{name}.onnx")).model
    plan = plan_fp16(model)
    return model, plan, rewrite_fp16(model, plan)


@cache
def eval_inputs(name: str) -> np.ndarray:
    files = sorted((ROOT / "calibration_data" / name / "eval").glob("*.npz"))
    return np.concatenate([np.load(f)["input"] for f in files])


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_samples(model: onnx.ModelProto, inputs: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    sess = session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[None].astype(dtype)})[0] for x in inputs]).astype(
        np.float64
    )


def inserted_casts(before: onnx.ModelProto, after: onnx.ModelProto) -> list[onnx.NodeProto]:
    names = {n.name for n in before.graph.node}
    return [n for n in after.graph.node if n.op_type == "Cast" and n.name not in names]


def cancelling_cast_pairs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Cast -> Cast chains that go float32 -> float16 -> float32 or back."""
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    to = {n.output[0]: helper.get_attribute_value(n.attribute[0]) for n in casts.values()}
    return [
        (casts[n.input[0]].name, n.name)
        for n in casts.values()
        if n.input[0] in casts and {to[n.input[0]], to[n.output[0]]} == {F16, F32}
    ]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_model_halves_and_agrees(name: str) -> None:
    model, plan, fp16 = sample(name)
    onnx.checker.check_model(fp16, full_check=True)
    ratio = len(fp16.SerializeToString()) / len(model.SerializeToString())
    assert ratio <= 0.55, f"{name}: size ratio {ratio:.3f}"

    reasons = {p.name: p.reason for p in plan}
    readers = {
        t: [n.name for n in fp16.graph.node if t in n.input] for t in (i.name for i in fp16.graph.initializer)
    }
    for init in fp16.graph.initializer:
        if init.data_type == F32 and int(np.prod(init.dims)) > SMALL_CONSTANT:
            assert all(init.name in reasons[r] for r in readers[init.name]), f"{init.name} stayed float32"

    ref = run_samples(model, eval_inputs(name))
    got = run_samples(fp16, eval_inputs(name))
    top1 = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    cosine = np.sum(ref * got, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1))
    # Measured (onnxruntime 1.32, x86-64): 100% top-1; mean cosine 0.99999998 to 0.99999999.
    assert top1 == 1.0, f"{name}: top-1 agreement {top1:.4f}"
    assert cosine.mean() >= 0.9999, f"{name}: mean cosine {cosine.mean():.6f}"

    assert cancelling_cast_pairs(fp16) == []
    # On x86-64 no region is worth float16 compute here: every Cast converts a float16-stored weight.
    inits = {i.name for i in fp16.graph.initializer}
    assert all(c.input[0] in inits for c in inserted_casts(model, fp16))
    assert [o.name for o in fp16.graph.output] == [o.name for o in model.graph.output]


def test_plan_reasons_on_the_cnn() -> None:
    _, plan, fp16 = sample("digits_cnn")
    conv = next(p for p in plan if p.op_type == "Conv")
    assert conv.precision == FLOAT
    assert conv.reason.startswith(
        "no float16 kernel for Conv in onnxruntime's CPU provider (it would insert Casts around it anyway)"
    )
    assert "stored as float16" in conv.reason
    weight = conv.quantized_inputs[0]
    assert next(i for i in fp16.graph.initializer if i.name == weight).data_type == F16
    flatten = next(p for p in plan if p.op_type == "Flatten")  # has a kernel, but sits between Relu and Gemm
    assert flatten.precision == FLOAT and flatten.reason.startswith("isolated between float32 nodes")


def tiny_cast_model() -> onnx.ModelProto:
    """x -> Reshape -> Cast(to=FLOAT) -> Max(., Cast(mask, to=FLOAT), ConstantOfShape) -> Transpose -> y."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Cast", ["r"], ["c"], name="cast_mid", to=F32),
        helper.make_node("Cast", ["mask"], ["mf"], name="cast_mask", to=F32),
        # Its shape comes from a graph input, so preprocessing cannot fold it into a constant.
        helper.make_node("Shape", ["mask"], ["mask_shape"], name="mask_shape"),
        helper.make_node(
            "ConstantOfShape",
            ["mask_shape"],
            ["k"],
            name="fill",
            value=numpy_helper.from_array(np.array([0.25], np.float32)),
        ),
        helper.make_node("Max", ["c", "mf", "k"], ["m"], name="max"),
        helper.make_node("Transpose", ["m"], ["y"], name="transpose", perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", F32, [6]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 3]),
        ],
        [helper.make_tensor_value_info("y", F32, [3, 2])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return preprocess(model).model


TINY_FEED = {"x": np.linspace(-1, 1, 6, dtype=np.float32), "mask": np.array([[0, 1, 0], [1, 0, 0]], np.int64)}


def test_cast_to_float_in_fp16_region_is_retargeted() -> None:
    model = tiny_cast_model()
    plan = plan_fp16(model)
    names = ["reshape", "cast_mid", "cast_mask", "fill", "max", "transpose"]
    assert {p.name: p.precision for p in plan if p.name in names} == dict.fromkeys(names, FP16)
    out = rewrite_fp16(model, plan)
    onnx.checker.check_model(out, full_check=True)
    by_name = {n.name: n for n in out.graph.node}
    for name in ("cast_mid", "cast_mask"):
        assert helper.get_attribute_value(by_name[name].attribute[0]) == F16
    assert helper.get_attribute_value(by_name["fill"].attribute[0]).data_type == F16
    # One Cast after the float32 input, one before the float32 output, which keeps its name.
    assert [(c.input[0], c.output[0]) for c in inserted_casts(model, out)] == [
        ("x", "x_fp16"),
        ("y_fp16", "y"),
    ]
    assert out.graph.output[0].type.tensor_type.elem_type == F32
    expected = session(model).run(None, TINY_FEED)[0]
    np.testing.assert_allclose(session(out).run(None, TINY_FEED)[0], expected, rtol=1e-3)

    # What onnxconverter-common does (#320): leaving to=FLOAT makes the model unloadable.
    broken = onnx.ModelProto()
    broken.CopyFrom(out)
    next(n for n in broken.graph.node if n.name == "cast_mid").attribute[0].i = F32
    with pytest.raises(Exception, match="float"):
        session(broken)


def test_keep_io_types_false_gives_float16_io() -> None:
    model = tiny_cast_model()
    out = rewrite_fp16(model, plan_fp16(model), keep_io_types=False)
    onnx.checker.check_model(out, full_check=True)
    assert out.graph.input[0].type.tensor_type.elem_type == F16
    assert out.graph.output[0].type.tensor_type.elem_type == F16
    assert inserted_casts(model, out) == []  # the region reads and writes the graph's float16 I/O directly
    feed = {**TINY_FEED, "x": TINY_FEED["x"].astype(np.float16)}
    y = session(out).run(None, feed)[0]
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, session(model).run(None, TINY_FEED)[0], rtol=1e-3)

    model, plan, _ = sample("digits_mlp")
    out = rewrite_fp16(model, plan, keep_io_types=False)
    onnx.checker.check_model(out, full_check=True)
    assert session(out).get_inputs()[0].type == session(out).get_outputs()[0].type == "tensor(float16)"
    inputs = eval_inputs("digits_mlp")[:50]
    got = run_samples(out, inputs, np.float16)
    assert np.array_equal(got.argmax(-1), run_samples(model, inputs).argmax(-1))


def test_overflowing_initializer_stays_float32() -> None:
    ok = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    big = ok.copy()
    big[0, 0] = 1e6
    nodes = [
        helper.make_node("Max", ["x", "w_ok"], ["h"], name="max_ok"),
        helper.make_node("Max", ["h", "w_big"], ["y"], name="max_big"),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", F32, [8, 8])],
        [helper.make_tensor_value_info("y", F32, [8, 8])],
        [numpy_helper.from_array(ok, "w_ok"), numpy_helper.from_array(big, "w_big")],
    )
    model = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).model
    plan = {p.name: p for p in plan_fp16(model)}
    assert plan["max_ok"].precision == FP16
    assert plan["max_big"].precision == FLOAT
    assert "w_big" in plan["max_big"].reason and "overflow float16" in plan["max_big"].reason
    out = rewrite_fp16(model, list(plan.values()))
    onnx.checker.check_model(out, full_check=True)
    stored = {i.name: i.data_type for i in out.graph.initializer}
    assert stored == {"w_ok": F16, "w_big": F32}
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(8, 8)
    y = session(out).run(None, {"x": x})[0]
    assert y[0, 0] == 1e6
    np.testing.assert_allclose(y, np.maximum(np.maximum(x, ok), big), rtol=1e-3)


def test_underflowing_initializer_stays_float32() -> None:
    """Weights of ~1e-6 (below float16's smallest normal, 6.1e-5) lose most of their precision in
    float16: that initializer keeps float32, its neighbour with ordinary values is stored float16."""
    rng = np.random.default_rng(3)
    tiny = (rng.normal(0, 1e-6, (8, 8))).astype(np.float32)
    ok = rng.normal(0, 1, (8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["x", "w_tiny"], ["h"], name="add_tiny"),
        helper.make_node("Concat", ["h", "w_ok"], ["y"], name="concat", axis=0),
        helper.make_node("Concat", ["x", "w_tiny"], ["z"], name="concat_tiny", axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "underflow",
        [helper.make_tensor_value_info("x", F32, [8, 8])],
        [helper.make_tensor_value_info("y", F32, [16, 8]), helper.make_tensor_value_info("z", F32, [16, 8])],
        [numpy_helper.from_array(tiny, "w_tiny"), numpy_helper.from_array(ok, "w_ok")],
    )
    model = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).model
    plan = {p.name: p for p in plan_fp16(model)}
    assert plan["concat_tiny"].precision == FLOAT  # a float16 Concat would flush w_tiny
    assert "w_tiny keeps float32: its small values underflow float16" in plan["concat_tiny"].reason
    out = rewrite_fp16(model, list(plan.values()))
    onnx.checker.check_model(out, full_check=True)
    stored = {i.name: i.data_type for i in out.graph.initializer}
    assert stored["w_tiny"] == F32 and stored["w_ok"] == F16
    x = rng.normal(0, 1, (8, 8)).astype(np.float32) * 1e-6
    z = session(out).run(None, {"x": x})[1]
    np.testing.assert_array_equal(z[8:], tiny)  # exact: never went through float16


def _overflow_model(path: Path) -> None:
    """A 1e6 weight (MatMul keeps float32) whose product, ~1e6, passes a Transpose to the output
    (a float16 kernel on the output's border: float16 without calibration)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (16, 16)).astype(np.float32)
    w[0, 0] = 1e6
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="matmul_big"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose_big", perm=[1, 0]),
        helper.make_node("Transpose", ["x"], ["xt"], name="transpose_small", perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", F32, [4, 16])],
        [helper.make_tensor_value_info("t", F32, [16, 4]), helper.make_tensor_value_info("xt", F32, [16, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def test_calibration_keeps_overflowing_activations_in_float32(tmp_path: Path) -> None:
    import json

    from conftest import quantcli

    _overflow_model(tmp_path / "m.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        np.save(calib / f"{i:03d}.npy", rng.uniform(0.5, 1.0, (4, 16)).astype(np.float32))
    test = rng.uniform(0.5, 1.0, (4, 16)).astype(np.float32)
    want = session(onnx.load(tmp_path / "m.onnx")).run(None, {"x": test})

    # Without calibration the Transpose runs in float16: its ~1e6 values become inf, and convert says so.
    run = quantcli(
        "convert",
        tmp_path / "m.onnx",
        "--mode",
        "fp16",
        "--eval",
        calib,
        "-o",
        tmp_path / "a.onnx",
        "--json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert any("not checked for float16 overflow" in w for w in report["warnings"])
    assert any(w.startswith("output t: ") and "inf or NaN" in w for w in report["warnings"])
    got = session(onnx.load(tmp_path / "a.onnx")).run(None, {"x": test})
    assert np.isinf(got[0]).any()

    run = quantcli(
        "convert",
        tmp_path / "m.onnx",
        "--mode",
        "fp16",
        "--calib",
        calib,
        "-o",
        tmp_path / "b.onnx",
        "--json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [c for c in report["warning_codes"] if not c.startswith("few-")] == []  # few samples: said
    assert report["calibration_samples"] == 16
    nodes = {n["name"]: n for n in report["nodes"]}
    assert nodes["transpose_big"]["precision"] == "float"
    assert "activation r reaches" in nodes["transpose_big"]["reason"]
    assert "overflow float16" in nodes["matmul_big"]["reason"]
    assert nodes["transpose_small"]["precision"] == "fp16"  # the check is per tensor, not per model
    kept = {name for group in report["float_reasons"] for name in group["nodes"]}
    assert {"matmul_big", "transpose_big"} <= kept
    out = onnx.load(tmp_path / "b.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert {i.name: i.data_type for i in out.graph.initializer}["w"] == F32
    got = session(out).run(None, {"x": test})
    np.testing.assert_array_equal(got[0], want[0])  # float32 end to end on that path
    np.testing.assert_allclose(got[1], want[1], rtol=1e-3)
    text = quantcli(
        "convert",
        tmp_path / "m.onnx",
        "--mode",
        "fp16",
        "--calib",
        calib,
        "-o",
        tmp_path / "c.onnx",
        cwd=tmp_path,
    )
    assert "Transpose x1 (transpose_big): activation r reaches" in text.stdout


def test_subgraph_reader_gets_a_float32_cast() -> None:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["b"], name="inner")],
        "branch",
        [],
        [helper.make_tensor_value_info("b", F32, [2, 3])],
    )
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "sub",
        [
            helper.make_tensor_value_info("x", F32, [6]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", F32, [2, 3])],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "shape")],
    )
    model = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).model
    plan = {p.name: p for p in plan_fp16(model)}
    assert plan["reshape"].precision == FP16 and plan["if"].precision == FLOAT
    out = rewrite_fp16(model, list(plan.values()))
    onnx.checker.check_model(out, full_check=True)
    inner = next(n for n in out.graph.node if n.name == "if").attribute[0].g.node[0]
    assert inner.input[0] == "r_fp32"
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(
        session(out).run(None, {"x": x, "cond": np.array(True)})[0], x.reshape(2, 3)
    )


def test_shape_reads_its_input_without_a_cast() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "shape",
        [helper.make_tensor_value_info("x", F32, [2, 3])],
        [helper.make_tensor_value_info("y", F32, [2, 3])],
    )
    model = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).model
    plan = {p.name: p for p in plan_fp16(model)}
    assert plan["reshape"].precision == FP16 and "reads only its input's shape" in plan["shape"].reason
    out = rewrite_fp16(model, list(plan.values()))
    onnx.checker.check_model(out, full_check=True)
    assert next(n for n in out.graph.node if n.name == "shape").input[0] == "x"
    assert len(inserted_casts(model, out)) == 2  # x -> x_fp16 for Reshape, y_fp16 -> y
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session(out).run(None, {"x": x})[0], x)


def test_rewriter_follows_a_hand_edited_plan_with_every_float_node_in_fp16() -> None:
    """The rewriter decides nothing: forcing the whole ViT (shape arithmetic included) to fp16 still
    gives a valid model, whose only activation Casts are at the graph input and output."""
    model, plan, _ = sample("digits_vit")
    types = elem_types(model.graph)
    has_float = [any(types.get(t) == F32 for t in (*n.input, *n.output)) for n in model.graph.node]
    edited = [replace(p, precision=FP16) if f else p for p, f in zip(plan, has_float, strict=True)]
    out = rewrite_fp16(model, edited)
    onnx.checker.check_model(out, full_check=True)
    assert cancelling_cast_pairs(out) == []
    inits = {i.name for i in out.graph.initializer}
    activations = [c.input[0] for c in inserted_casts(model, out) if c.input[0] not in inits]
    assert activations == ["input", "logits_fp16"]
    inputs = eval_inputs("digits_vit")[:50]
    ref, got = run_samples(model, inputs), run_samples(out, inputs)
    assert np.array_equal(ref.argmax(-1), got.argmax(-1))


def test_rewrite_is_deterministic_and_leaves_its_input_alone() -> None:
    model, plan, first = sample("digits_vit")
    before = model.SerializeToString(deterministic=True)
    again = rewrite_fp16(model, plan_fp16(model))
    assert model.SerializeToString(deterministic=True) == before
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
    assert plan_fp16(model) == plan


def test_rewriter_refuses_a_plan_for_another_model() -> None:
    model, plan, _ = sample("digits_mlp")
    with pytest.raises(Exception, match="not in the model"):
        rewrite_fp16(model, [*plan, NodePlan("nope", "Relu", FP16, "")])


def _probe_module():
    spec = importlib.util.spec_from_file_location(
        "probe_fp16_kernels", ROOT / "scripts" / "probe_fp16_kernels.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not ort.__version__.startswith("1.32.") or platform.machine() not in ("x86_64", "AMD64"),
    reason="FP16_CPU_KERNELS was probed on onnxruntime 1.32 for x86-64",
)
def test_fp16_kernel_set_matches_the_probe() -> None:
    verdicts = _probe_module().probe_all()
    assert {op for op, v in verdicts.items() if v == "native"} == FP16_CPU_KERNELS
