"""Accuracy to a budget (--fallback) and exclusions, on a model with one deliberately broken layer.

The planted model: conv_a -> conv_b -> conv_c -> head. conv_a's channel 5 is always 0 after its
Relu, and conv_b reads that channel with a weight of 400 in every output channel: the float model
never sees it, but each of conv_b's per-channel INT8 scales is set by it, so its other weights
round to a few codes. Static INT8 keeps ~6.8 dB SQNR on the logits; with conv_b alone in float,
~42 dB (measured on the samples below).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import optimized_op_counts, quantcli, sha256
from onnx import TensorProto, helper, numpy_helper

from quantcli.api import ConvertOptions, convert
from quantcli.quantize.plan import FLOAT, FP16, INT8

BROKEN = "conv_b"
GOAL_DB = 25.0  # between static (~6.8 dB) and conv_b in float (~42 dB)


def planted_model(path: Path, data: Path, outlier: float = 400.0) -> None:
    rng = np.random.default_rng(0)
    c = 8
    wa = rng.normal(0, 0.4, (c, 3, 3, 3)).astype(np.float32)
    ba = np.full(c, 0.1, np.float32)
    wa[5], ba[5] = 0.0, -1.0  # channel 5 of conv_a is 0 after its Relu
    wb = rng.normal(0, 0.2, (c, c, 3, 3)).astype(np.float32)
    bb = np.full(c, 0.05, np.float32)
    wb[:, 5, 1, 1] = outlier  # reads only zeros: invisible in float, sets every INT8 scale
    wc = rng.normal(0, 0.2, (c, c, 3, 3)).astype(np.float32)
    wd = rng.normal(0, 0.1, (10, c * 8 * 8)).astype(np.float32)
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="conv_a", **pads),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_a"),
        helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], name=BROKEN, **pads),
        helper.make_node("Relu", ["b"], ["br"], name="relu_b"),
        helper.make_node("Conv", ["br", "wc", "bc"], ["cc"], name="conv_c", **pads),
        helper.make_node("Relu", ["cc"], ["cr"], name="relu_c"),
        helper.make_node("Flatten", ["cr"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wd", "bd"], ["logits"], name="head", transB=1),
    ]
    values = {"wa": wa, "ba": ba, "wb": wb, "bb": bb, "wc": wc, "bc": np.zeros(c, np.float32)}
    values.update(wd=wd, bd=np.zeros(10, np.float32))
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    for split, n in (("calib", 40), ("eval", 20)):
        (data / split).mkdir(parents=True)
        for i in range(n):
            np.savez(data / split / f"{i:03d}.npz", x=rng.random((1, 3, 8, 8), dtype=np.float32))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("planted")
    planted_model(root / "planted.onnx", root)
    return root


def _convert(root: Path, tag: str, **options):  # noqa: ANN003, ANN202
    output, plan = root / f"{tag}.onnx", root / f"{tag}.json"
    options.setdefault("speed_plan", False)  # its 8-channel convolutions are faster in float on AVX2
    result = convert(
        ConvertOptions(
            model=root / "planted.onnx",
            output=output,
            calib=root / "calib",
            eval=root / "eval",
            save_plan=plan,
            **options,
        )
    )
    return output, plan, result


@cache
def _convert_kw(root: Path, tag: str, **options):  # noqa: ANN003, ANN202
    from quantcli.thresholds import Thresholds

    bound = options.pop("min_sqnr", None)
    if bound is not None:
        options["thresholds"] = Thresholds(min_sqnr=bound)
    return _convert(root, tag, **options)


def search_float(root: Path):  # noqa: ANN201
    return _convert_kw(root, "search_float", min_sqnr=GOAL_DB, fallback="float")


def test_planted_layer_ranks_first_and_only_it_moves(planted: Path) -> None:
    output, _, result = search_float(planted)
    static = _convert_kw(planted, "static")[2]
    assert static.agreement.outputs[0].sqnr_db < GOAL_DB - 10  # the plant breaks INT8
    s = result.search
    assert s.candidates[0].name == BROKEN
    assert s.candidates[0].gain_db > 20  # measured alone, end to end
    assert s.met and s.moved == [BROKEN]
    assert result.exit_code == 0 and result.written
    by_name = {n.name: n for n in result.nodes}
    assert by_name[BROKEN].precision == FLOAT
    assert by_name[BROKEN].reason.startswith(f"float: fallback to meet --min-sqnr {GOAL_DB:g}")
    assert all(by_name[n].precision == INT8 for n in ("conv_a", "conv_c", "head"))
    assert result.agreement.outputs[0].sqnr_db >= GOAL_DB
    assert [c.passed for c in result.checks] == [True]
    assert [st.moved for st in s.steps] == [0, 1]  # no ranking beyond what the goal needed
    onnx.checker.check_model(onnx.load(output), full_check=True)


def test_fallback_node_runs_in_float_in_onnxruntime(planted: Path, tmp_path: Path) -> None:
    """Between INT8 neighbours, onnxruntime's WeightBiasQuantization would give the float Conv
    per-tensor INT8 weights at load; its own per-channel DequantizeLinear keeps it float."""
    output, _, _ = search_float(planted)
    ops, optimized = optimized_op_counts(output, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 1
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    weight = next(t for t in optimized.graph.initializer if t.name == conv.input[1])
    assert weight.data_type == TensorProto.FLOAT  # the float weights, not an INT8 copy
    assert np.abs(numpy_helper.to_array(weight)).max() == pytest.approx(400.0)


def test_replay_is_byte_identical_without_searching(planted: Path, tmp_path: Path) -> None:
    output, plan, _ = search_float(planted)
    replay = convert(
        ConvertOptions(model=planted / "planted.onnx", output=tmp_path / "replay.onnx", plan=plan)
    )
    assert replay.search is None and replay.plan_replayed
    assert sha256(tmp_path / "replay.onnx") == sha256(output)


def test_fp16_fallback_makes_a_mixed_plan(planted: Path) -> None:
    _, _, result = _convert_kw(planted, "search_fp16", min_sqnr=GOAL_DB, fallback="fp16")
    assert result.search.moved == [BROKEN] and result.mode == "mixed"
    assert {n.name for n in result.nodes if n.precision == FP16} == {BROKEN}
    assert result.agreement.outputs[0].sqnr_db >= GOAL_DB


def test_unreachable_goal_exits_3_and_writes_only_the_plan(planted: Path) -> None:
    out = planted / "unreachable"
    out.mkdir()
    r = quantcli(
        *("convert", planted / "planted.onnx", "--calib", planted / "calib", "--eval", planted / "eval"),
        *("-o", out / "q.onnx", "--save-plan", out / "plan.json", "--json", "--quiet"),
        *("--min-sqnr", "60", "--fallback", "float", "--max-fallback", "1", "--no-speed-plan"),
        cwd=out,
    )
    assert r.returncode == 3, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]
    report = json.loads(r.stdout)
    assert report["exit_code"] == 3 and report["written"] is False
    assert report["search"]["met"] is False and report["search"]["moved"] == [BROKEN]
    assert report["error"]["code"] == "cannot-do" and report["error"]["message"] in r.stderr
    assert "cannot meet --min-sqnr 60 with --fallback float and at most --max-fallback 1 of" in r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert next(n for n in plan["nodes"] if n["name"] == BROKEN)["precision"] == FLOAT

    keep = quantcli(
        *("convert", planted / "planted.onnx", "--calib", planted / "calib", "--eval", planted / "eval"),
        *("-o", out / "best.onnx", "--quiet", "--min-sqnr", "60", "--fallback", "float"),
        *("--max-fallback", "1", "--keep-best", "--no-speed-plan"),
        cwd=out,
    )
    assert keep.returncode == 3 and (out / "best.onnx").is_file()
    assert "the most accurate model was written (--keep-best)" in keep.stderr


def test_exclusions_take_effect(planted: Path) -> None:
    _, _, result = _convert_kw(planted, "excluded", exclude_nodes="conv_?", exclude_op_types="Gemm")
    precision = {n.name: n.precision for n in result.nodes}
    assert [precision[n] for n in ("conv_a", "conv_b", "conv_c", "head")] == [FLOAT] * 4
    reasons = {n.name: n.reason for n in result.nodes}
    assert reasons["conv_a"] == "float: excluded by --exclude-nodes conv_?"
    assert reasons["head"] == "float: excluded by --exclude-op-types Gemm"
    # An excluded node is never a fallback candidate.
    _, _, searched = _convert_kw(
        planted, "excluded_search", min_sqnr=GOAL_DB, fallback="float", exclude_nodes=BROKEN
    )
    assert searched.search.met and BROKEN not in {c.name for c in searched.search.candidates}
    assert searched.search.steps[0].moved == 0 and searched.search.moved == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--exclude-nodes", "conv_*,nope*"), "--exclude-nodes nope*: matches no node of the model"),
        (("--exclude-op-types", "Softmax"), "--exclude-op-types Softmax: the model has no such node"),
        (("--fallback", "float"), "--fallback float needs an accuracy threshold to meet"),
        (("--max-fallback", "3"), "--max-fallback applies to --fallback only"),
        (("--min-sqnr", "20", "--fallback", "float", "--max-fallback", "x"), "--max-fallback x: expected"),
        (("--mode", "dynamic", "--exclude-nodes", "conv_a"), "--exclude-nodes applies to --mode static"),
    ],
)
def test_bad_search_options_exit_2(planted: Path, tmp_path: Path, args: tuple, message: str) -> None:
    r = quantcli(
        *("convert", planted / "planted.onnx", "--calib", planted / "calib", "-o", tmp_path / "q.onnx"),
        *args,
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_search_options_refused_with_a_plan(planted: Path, tmp_path: Path) -> None:
    _, plan, _ = search_float(planted)
    r = quantcli(
        *("convert", planted / "planted.onnx", "--plan", plan, "-o", tmp_path / "q.onnx"),
        *("--eval", planted / "eval", "--min-sqnr", "20", "--fallback", "float"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "--fallback shapes a new plan" in r.stderr


def test_per_layer_json_gives_the_flag_that_excludes_the_worst_layer(planted: Path, tmp_path: Path) -> None:
    """compare --per-layer's worst layer, pasted into convert as its exclude_flag, stays float."""
    import shlex

    static, _, _ = _convert_kw(planted, "static")
    r = quantcli(
        *("compare", planted / "planted.onnx", static, "--data", planted / "eval", "--per-layer", "--json"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    layers = json.loads(r.stdout)["per_layer"]["layers"]
    worst = next(row for row in layers if row["exclude_flag"])
    assert worst["node"] == BROKEN and worst["exclude_flag"] == f"--exclude-nodes {BROKEN}"
    assert all(row["exclude_flag"] is None for row in layers if row["op_type"] == "graph input")
    result = convert(
        ConvertOptions(
            model=planted / "planted.onnx",
            output=tmp_path / "q.onnx",
            calib=planted / "calib",
            exclude_nodes=shlex.split(worst["exclude_flag"])[1],
            speed_plan=False,
        )
    )
    assert {n.name for n in result.nodes if n.precision == FLOAT and n.op_type == "Conv"} == {BROKEN}
