"""The use-def truth in graph.py: reads inside subgraphs (with shadowing), graph outputs, graph
inputs with a default, and the removal and renaming built on them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantcli.graph import (
    GraphIndex,
    NameAllocator,
    remove_unused_initializers,
    rename_subgraph_reads,
    subgraph_local_names,
    subgraph_reads,
)

F = TensorProto.FLOAT


def _init(name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones((2, 2), np.float32), name)


def _loop_body(reads: list[str], carried: str = "v") -> onnx.GraphProto:
    """A Loop body with carried value `carried` whose output adds up `reads` (outer or its own)."""
    nodes = [helper.make_node("Identity", ["c"], ["c_out"])]
    acc = carried
    for k, name in enumerate(reads):
        nodes.append(helper.make_node("Add", [acc, name], [f"acc{k}"]))
        acc = f"acc{k}"
    nodes.append(helper.make_node("Identity", [acc], ["v_out"]))
    return helper.make_graph(
        nodes,
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info(carried, F, [2, 2]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", F, [2, 2]),
        ],
    )


def _model(nodes: list, inits: list, outputs: list[str], inputs: tuple[str, ...] = ("x",)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(i, F, [2, 2]) for i in inputs],
        [helper.make_tensor_value_info(o, F, [2, 2]) for o in outputs],
        [*inits, numpy_helper.from_array(np.array(1, np.int64), "trip")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_subgraph_reads_are_outer_names_only_nested_and_shadowed() -> None:
    # The outer Loop's body reads `a`, and holds an inner Loop whose body reads `b`, the outer body's
    # own `v` and `w`, which the inner body defines itself (its carried value): `w` is shadowed.
    inner = _loop_body(["b", "w"], carried="w")
    outer_body = _loop_body(["a"])
    outer_body.node.insert(0, helper.make_node("Loop", ["trip", "", "v"], ["inner_v"], body=inner))
    outer_body.node[-1].input[0] = "inner_v"
    loop = helper.make_node("Loop", ["trip", "", "x"], ["y"], name="loop", body=outer_body)
    model = _model([loop], [_init("a"), _init("b"), _init("w")], ["y"])
    assert subgraph_reads(loop) == {"a", "b", "trip"}  # the inner Loop's trip count is outer too
    index = GraphIndex(model.graph)
    assert [n.name for n in index.consumers["b"]] == ["loop"]
    assert "w" not in index.consumers and not index.is_used("w")
    assert subgraph_local_names(model.graph) >= {"v", "w", "inner_v", "acc0"}


def test_rename_subgraph_reads_leaves_shadowing_names_alone() -> None:
    body = _loop_body(["a", "w"], carried="w")  # reads outer `a` and its own `w`
    loop = helper.make_node("Loop", ["trip", "", "x"], ["y"], name="loop", body=body)
    model = _model([loop, helper.make_node("Add", ["y", "w"], ["z"])], [_init("a"), _init("w")], ["z"])
    rename_subgraph_reads(loop, {"a": "a2", "w": "w2"}.get)
    reads = [i for n in loop.attribute[0].g.node for i in n.input]
    assert "a2" in reads and "a" not in reads
    assert "w" in reads and "w2" not in reads
    del model


def test_index_keeps_constants_apart_from_overridable_initializers() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = _model(nodes, [_init("w")], ["y"], inputs=("x", "w"))
    index = GraphIndex.of(model)  # IR >= 4: `w` is an input with a default
    assert "w" in index.overridable and "w" not in index.initializers
    assert index.graph_inputs == {"x"}
    assert "also a graph input" in index.why_not_constant("w")
    model.ir_version = 3  # IR 3 lists every initializer as an input: all are constants
    index = GraphIndex.of(model)
    assert "w" in index.initializers and not index.overridable
    assert index.graph_inputs == {"x"}


def test_only_reader_counts_subgraphs_and_graph_outputs() -> None:
    body = _loop_body(["w"])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("MatMul", ["h", "u"], ["y"], name="mm2"),
        helper.make_node("Loop", ["trip", "", "y"], ["z"], name="loop", body=body),
    ]
    model = _model(nodes, [_init("w"), _init("u")], ["z", "u"])
    index = GraphIndex(model.graph)
    assert index.only_reader("w") is None  # the MatMul and the Loop's body
    assert index.only_reader("u") is None  # a graph output too
    assert index.only_reader("h").name == "mm2"
    assert not index.storable("u") and index.storable("w")


def test_remove_unused_initializers_keeps_every_kind_of_use() -> None:
    then = helper.make_graph(
        [helper.make_node("Identity", ["in_branch"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", F, [2, 2])],
    )
    orelse = helper.make_graph(
        [helper.make_node("Neg", ["as_input"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", F, [2, 2])],
    )
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=orelse),
    ]
    inits = [_init(n) for n in ("in_branch", "as_input", "graph_out", "default", "dead", "dead2")]
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    model = _model(nodes, inits, ["y", "graph_out"], inputs=("x", "default"))
    assert remove_unused_initializers(model.graph, ["dead", "in_branch", "graph_out", "default"]) == ["dead"]
    assert remove_unused_initializers(model.graph) == ["dead2", "trip"]
    names = {t.name for t in model.graph.initializer}
    assert names == {"in_branch", "as_input", "graph_out", "default", "zero"}
    onnx.checker.check_model(model, full_check=True)


def test_new_names_avoid_names_inside_subgraphs() -> None:
    body = _loop_body(["a"])
    model = _model([helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body)], [_init("a")], ["y"])
    names = NameAllocator(model.graph)
    assert names.new("acc0") == "acc0_1"  # `acc0` is a tensor of the body
