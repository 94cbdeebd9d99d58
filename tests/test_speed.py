"""The speed plan (quantize/speed.py): Conv/MatMul/Gemm nodes that the target's cost table says
run slower in integer stay float, decided from the shipped table alone (never the host).

The model: a ShuffleNet-style unit (grouped 1x1 Conv, channel shuffle, depthwise 3x3 Conv,
grouped 1x1 Conv, residual Add) whose integer kernels the AVX2 table prices 1.5-4x slower than
float, then a dense 3x3 Conv over 64 channels and a 256x256 MatMul head that the same table prices
faster in integer. Latency itself is measured by benchmarks/speed_plan.py, never asserted here.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import quantcli
from onnx import TensorProto, helper, numpy_helper

from quantcli.api import ConvertOptions, convert
from quantcli.quantize.plan import FLOAT, INT8
from quantcli.quantize.speed import _min_cut, _total, load_table, tables_for

SLOW = ("group_a", "depthwise", "group_c")  # slower in integer on AVX2 (costs/avx2.json)
FAST = ("dense", "head")


def shuffle_model(path: Path, data: Path) -> None:
    rng = np.random.default_rng(0)
    c, hw, g = 64, 28, 4

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    values = {
        "wa": w(c, c // g, 1, 1),
        "wd": w(c, 1, 3, 3),
        "wc": w(c, c // g, 1, 1),
        "wn": w(c, c, 3, 3),
        "wm": w(256, 256),
        "s1": np.array([1, g, c // g, hw, hw], np.int64),
        "s2": np.array([1, c, hw, hw], np.int64),
        "s3": np.array([1, -1, 256], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="group_a", group=g),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Reshape", ["ar", "s1"], ["r1"], name="shuffle_1"),
        helper.make_node("Transpose", ["r1"], ["t"], name="shuffle_t", perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "s2"], ["r2"], name="shuffle_2"),
        helper.make_node("Conv", ["r2", "wd"], ["d"], name="depthwise", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "wc"], ["cc"], name="group_c", group=g),
        helper.make_node("Add", ["x", "cc"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["rr"], name="relu_res"),
        helper.make_node("Conv", ["rr", "wn"], ["n"], name="dense", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["n"], ["nr"], name="relu_n"),
        helper.make_node("Reshape", ["nr", "s3"], ["rows"], name="rows"),
        helper.make_node("MatMul", ["rows", "wm"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "shuffle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c * hw * hw // 256, 256])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    (data / "calib").mkdir(parents=True)
    for i in range(8):
        np.savez(data / "calib" / f"{i:03d}.npz", x=rng.standard_normal((1, c, hw, hw)).astype(np.float32))


@pytest.fixture(scope="module")
def shuffle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shuffle")
    shuffle_model(root / "model.onnx", root)
    return root


def _plan(root: Path, tag: str, **options) -> tuple[dict[str, dict], object]:  # noqa: ANN003
    result = convert(
        ConvertOptions(
            model=root / "model.onnx",
            output=root / f"{tag}.onnx",
            calib=root / "calib",
            save_plan=root / f"{tag}.json",
            **options,
        )
    )
    plan = json.loads((root / f"{tag}.json").read_text())
    return {n["name"]: n for n in plan["nodes"]}, result


def test_slow_integer_nodes_stay_float_with_the_table_as_reason(shuffle: Path) -> None:
    nodes, result = _plan(shuffle, "default")
    for name in SLOW:
        assert nodes[name]["precision"] == FLOAT, nodes[name]
        reason = nodes[name]["reason"]
        assert reason.startswith("float for speed: ") and "on avx2" in reason and "cost table avx2" in reason
    assert "grouped 1x1 Conv (4 groups), 64->64 channels at 28x28" in nodes["group_a"]["reason"]
    for name in FAST:
        assert nodes[name]["precision"] == INT8, nodes[name]
    assert sorted(result.speed.keep_float) == sorted(SLOW)
    assert result.speed.candidates == 5
    before, after = result.speed.estimate_us["avx2"]
    assert after < before
    # the shuffle between two float convolutions stays float too: no Q/DQ around it alone
    assert nodes["shuffle_t"]["precision"] == FLOAT
    model = onnx.load(shuffle / "default.onnx")
    onnx.checker.check_model(model, full_check=True)


def test_no_speed_plan_quantizes_every_node(shuffle: Path) -> None:
    nodes, result = _plan(shuffle, "all", speed_plan=False)
    assert all(nodes[n]["precision"] == INT8 for n in SLOW + FAST)
    assert result.speed is None


def test_the_plan_depends_on_the_target_not_the_host(shuffle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte-identical plans whatever the host's features; a target without a table plans no speed."""
    plans = []
    for features in ("avx2", "avx2,avx512f,avx512_vnni"):
        monkeypatch.setenv("QUANTCLI_CPU_FEATURES", features)
        _plan(shuffle, f"host-{features}")
        plans.append((shuffle / f"host-{features}.json").read_bytes())
    assert plans[0] == plans[1]
    nodes, result = _plan(shuffle, "vnni", target_cpu="vnni")
    assert all(nodes[n]["precision"] == INT8 for n in SLOW + FAST)
    assert result.speed.tables == [] and result.speed.unplanned == ["vnni"]


def test_cli_reports_and_replays(shuffle: Path) -> None:
    out = shuffle / "cli.onnx"
    plan = shuffle / "cli.json"
    r = quantcli(
        "convert",
        shuffle / "model.onnx",
        "--calib",
        shuffle / "calib",
        "-o",
        out,
        "--save-plan",
        plan,
        "--json",
        cwd=shuffle,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["speed_plan"]
    assert report["kept_float"] == sorted(SLOW)
    assert report["tables"][0].startswith("avx2 (onnxruntime ")
    assert report["no_table_for"] == ["vnni", "arm"]
    text = quantcli(
        "convert", shuffle / "model.onnx", "--calib", shuffle / "calib", "-o", shuffle / "t.onnx", cwd=shuffle
    )
    assert "speed plan" in text.stdout and "3 of 5 Conv/MatMul/Gemm nodes kept in float" in text.stdout
    replay = shuffle / "replay.onnx"
    r = quantcli("convert", shuffle / "model.onnx", "--plan", plan, "-o", replay, cwd=shuffle)
    assert r.returncode == 0, r.stderr
    assert replay.read_bytes() == out.read_bytes()
    r = quantcli(
        "convert", shuffle / "model.onnx", "--plan", plan, "-o", replay, "--no-speed-plan", cwd=shuffle
    )
    assert r.returncode == 2 and "--no-speed-plan shapes a new plan" in r.stderr
    r = quantcli(
        "convert", shuffle / "model.onnx", "--mode", "dynamic", "-o", replay, "--no-speed-plan", cwd=shuffle
    )
    assert r.returncode == 2 and "--no-speed-plan applies to --mode static or --mode mixed only" in r.stderr


def test_shipped_table_records_where_it_was_measured() -> None:
    table = load_table("avx2")
    assert table is not None and table.kind == "avx2"
    assert "avx2" in table.measured["cpu"]["flags"]
    assert not any("vnni" in f for f in table.measured["cpu"]["flags"])
    assert table.measured["command"].startswith("python scripts/measure_costs.py --kind avx2")
    assert [t.kind for t in tables_for("any")[0]] == ["avx2"]
    # what the table says, in its own numbers: depthwise 3x3 over 32 channels at 28x28 is slower in
    # integer, a 3x3 Conv over 128 channels faster
    f, i = table.times("depthwise3", (32, 28), 32 * 9 * 28 * 28)
    assert i > 1.2 * f
    f, i = table.times("dense3", (128, 28), 128 * 128 * 9 * 28 * 28)
    assert i < 0.8 * f


def test_min_cut_finds_the_cheapest_labelling() -> None:
    """Against brute force on random problems: unary costs, pair penalties and shared conversions."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 7))
        names = [f"n{i}" for i in range(n)]
        unary = {m: (float(rng.uniform(0, 10)), float(rng.uniform(0, 10))) for m in names}
        pairs = {
            (a, b): float(rng.uniform(0, 6))
            for a, b in itertools.combinations(names, 2)
            if rng.random() < 0.4
        }
        implies = []
        for k in range(int(rng.integers(0, 3))):
            aux = f"\0aux{k}"
            unary[aux] = (float(rng.uniform(0, 8)), 0.0)
            implies += [(m, aux) for m in names if rng.random() < 0.5]
        floats = _min_cut(sorted(unary), unary, pairs, implies) & set(names)
        best = min(
            _total(set(c), set(names), unary, pairs, implies)
            for r in range(n + 1)
            for c in itertools.combinations(names, r)
        )
        assert _total(floats, set(names), unary, pairs, implies) == pytest.approx(best, abs=1e-6)


# -- the latency check (on by default) ------------------------------------------------------------


def test_latency_is_checked_by_default_and_can_be_skipped(shuffle: Path) -> None:
    _, result = _plan(shuffle, "timed", speed_plan=False)
    lat = result.latency
    assert lat is not None and 10 <= lat.rounds <= 30 and lat.threads == 1
    assert lat.reference_ms > 0 and lat.candidate_ms > 0
    assert result.seconds["latency"] < 10
    _, result = _plan(shuffle, "untimed", check_latency=False)
    assert result.latency is None and "latency" not in result.seconds


def test_op_times_say_where_the_time_goes(shuffle: Path) -> None:
    """What a slower result reports: onnxruntime's profiler, per op type of the optimized graph."""
    from dataclasses import replace

    from quantcli.latency import op_times
    from quantcli.report.convert import convert_to_dict, render_convert

    _, result = _plan(shuffle, "profiled", speed_plan=False)
    x = {"x": np.random.default_rng(0).standard_normal((1, 64, 28, 28)).astype(np.float32)}
    ops = op_times(shuffle / "profiled.onnx", x)
    by_op = {t.op_type: t for t in ops}
    assert by_op["QLinearConv"].nodes == 4 and by_op["QLinearConv"].ms > 0  # the 4 integer convolutions
    assert ops == sorted(ops, key=lambda t: -t.ms)
    float_ops = {t.op_type for t in op_times(shuffle / "model.onnx", x)}
    assert not float_ops & {"QLinearConv", "QuantizeLinear", "DequantizeLinear"}
    # rendered as the report shows a slower result (the ratio forced above 1 for the rendering)
    slower = replace(
        result,
        latency=replace(result.latency, candidate_ms=2 * result.latency.reference_ms),
        latency_ops={"candidate": ops[:5], "reference": op_times(shuffle / "model.onnx", x)[:5]},
    )
    data = convert_to_dict(slower)
    assert data["latency"]["op_times"]["candidate"][0]["op_type"] == ops[0].op_type
    import io
    from contextlib import redirect_stdout

    text = io.StringIO()
    with redirect_stdout(text):
        render_convert(slower, rich_output=False)
    assert "100% slower than FP32 on this CPU; where the time goes:" in text.getvalue()
    assert "QLinearConv x4 " in text.getvalue()


def test_latency_check_without_a_sample_to_time_is_a_note(tmp_path: Path) -> None:
    """No samples and an input too large to make a random sample of: the default check is skipped
    and says why; asked for by --max-latency-ratio, it is an error as before."""
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "noshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100000, 100000, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100000, 100000, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "m.onnx")
    r = quantcli(
        "convert", tmp_path / "m.onnx", "--mode", "dynamic", "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["latency"] is None and "input 'x' declares shape" in data["latency_skipped"]
    r = quantcli("convert", tmp_path / "m.onnx", "--mode", "dynamic", "-o", tmp_path / "q.onnx", cwd=tmp_path)
    assert r.returncode == 0 and "not measured: " in r.stdout
    r = quantcli(
        "convert",
        tmp_path / "m.onnx",
        "--mode",
        "dynamic",
        "-o",
        tmp_path / "q2.onnx",
        "--max-latency-ratio",
        "2",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "declares shape" in r.stderr
