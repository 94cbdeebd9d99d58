"""Each preprocess pass on a tiny graph: `modified`, the surviving nodes, and unchanged numerics."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from quantcli.graph import copy_model
from quantcli.preprocess import DEFAULT_PASSES, preprocess
from quantcli.preprocess.fold_constants import FoldConstants
from quantcli.preprocess.fuse_bn import FuseConvBatchNorm
from quantcli.preprocess.names import NameNodes
from quantcli.preprocess.opset import UpgradeOpset
from quantcli.preprocess.shapes import InferShapes

RNG = np.random.default_rng(0)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def conv_bn_model(opset: int = 17, with_bias: bool = True) -> onnx.ModelProto:
    w = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    conv_inputs = ["x", "w"]
    if with_bias:
        inits.append(numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "b"))
        conv_inputs.append("b")
    for name, values in {
        "gamma": RNG.uniform(0.5, 2, 4),
        "beta": RNG.normal(size=4),
        "mean": RNG.normal(size=4),
        "var": RNG.uniform(0.1, 3, 4),
    }.items():
        inits.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn", epsilon=1e-3
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_fuse_conv_bn_removes_bn_and_keeps_outputs() -> None:
    for with_bias in (True, False):
        model = conv_bn_model(with_bias=with_bias)
        x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
        expected = run(model, x)
        result = FuseConvBatchNorm().call(model)
        assert result.modified
        assert [n.op_type for n in result.model.graph.node] == ["Conv"]
        assert (
            {t.name for t in result.model.graph.initializer} == {"w", "b"}
            if with_bias
            else {"w", "w_bn_bias"}
        )
        onnx.checker.check_model(result.model, full_check=True)
        np.testing.assert_allclose(run(result.model, x), expected, rtol=1e-4, atol=1e-5)


def test_fuse_conv_bn_says_why_not() -> None:
    model = conv_bn_model()
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    result = FuseConvBatchNorm().call(model)
    assert not result.modified
    assert any("other consumers" in note for note in result.notes)


def test_fold_constants_and_identity() -> None:
    w = RNG.normal(size=(3, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w_const"], name="const", value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["w_const"], ["w_id"], name="id"),
        helper.make_node("MatMul", ["x", "w_id"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    expected = run(model, x)
    result = FoldConstants().call(model)
    assert result.modified
    assert [n.op_type for n in result.model.graph.node] == ["MatMul"]
    assert result.model.graph.node[0].input[1] == "w_const"
    assert [t.name for t in result.model.graph.initializer] == ["w_const"]
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_array_equal(run(result.model, x), expected)


def test_opset_upgrade_keeps_outputs() -> None:
    model = conv_bn_model(opset=11)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    expected = run(model, x)
    result = UpgradeOpset().call(model)
    assert result.modified
    assert next(o.version for o in result.model.opset_import if o.domain == "") == 13
    np.testing.assert_allclose(run(result.model, x), expected, rtol=1e-6, atol=1e-6)
    assert not UpgradeOpset().call(result.model).modified


def test_shape_inference_tolerates_unknown_ops() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Mystery", ["r"], ["y"], name="mystery", domain="custom.domain"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)]
    )
    result = InferShapes().call(model)
    assert [v.name for v in result.model.graph.value_info] == ["r"]


def test_name_nodes_makes_names_unique() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"], name="n"),
        helper.make_node("Relu", ["b"], ["y"], name="n"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    result = NameNodes().call(helper.make_model(graph))
    names = [n.name for n in result.model.graph.node]
    assert result.modified and len(set(names)) == 3 and names[1] == "n"


def test_preprocess_does_not_touch_the_callers_model() -> None:
    model = conv_bn_model(opset=17)
    before = model.SerializeToString()
    result = preprocess(model)
    assert model.SerializeToString() == before
    assert "fuse_conv_bn" in result.applied
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_pad_computed_from_constants_folds_into_conv() -> None:
    """The EfficientNet export pattern: pads computed by Constant -> Cast, Pad, then Conv."""
    from quantcli.preprocess.fuse_pad import FusePadConv

    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["pads_f"],
            name="c",
            value=numpy_helper.from_array(np.array([0, 0, 0, 1, 0, 0, 2, 1], np.float32)),
        ),
        helper.make_node("Cast", ["pads_f"], ["pads"], name="cast", to=TensorProto.INT64),
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        helper.make_node("Conv", ["p", "w"], ["y"], name="conv", strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.normal(size=(1, 3, 9, 9)).astype(np.float32)
    expected = run(model, x)
    result = preprocess(model)
    assert "fuse_pad_conv" in result.applied and "fold_constants" in result.applied
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]
    conv = result.model.graph.node[0]
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 1, 2, 1]
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_allclose(run(result.model, x), expected, rtol=1e-5, atol=1e-5)
    # A Pad with a non-zero value stays.
    model.graph.node[2].input.append("value")
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "value"))
    assert not FusePadConv().call(preprocess(model).model).modified


def test_initializers_no_node_reads_are_dropped() -> None:
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    dead = numpy_helper.from_array(np.zeros(3, np.int64), "dead")
    inner = helper.make_graph(
        [helper.make_node("Identity", ["sub_read"], ["b"], name="inner")],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 2])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("If", ["cond"], ["z"], name="if", then_branch=inner, else_branch=inner),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2]),
        ],
        [w, dead, numpy_helper.from_array(np.ones((2, 2), np.float32), "sub_read")],
    )
    result = preprocess(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert {t.name for t in result.model.graph.initializer} == {"w", "sub_read"}  # read in a subgraph: kept
    assert "drop_unused_initializers" in result.applied
    assert "dropped 1 initializer(s) that no node reads" in result.notes


def _branch_reading(name: str, shape: list[int]) -> onnx.GraphProto:
    """An If branch that returns -`name`, an outer tensor."""
    return helper.make_graph(
        [helper.make_node("Neg", [name], [f"{name}_neg"])],
        f"reads_{name}",
        [],
        [helper.make_tensor_value_info(f"{name}_neg", TensorProto.FLOAT, shape)],
    )


def _with_if(
    model: onnx.ModelProto, then: onnx.GraphProto, orelse: onnx.GraphProto, shape: list[int]
) -> None:
    """Add an If on a graph input `cond` and its output `z` to `model`."""
    g = model.graph
    g.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    g.node.append(helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then, else_branch=orelse))
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, shape))


def run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_fuse_conv_bn_keeps_an_initializer_read_only_inside_an_if_branch() -> None:
    model = conv_bn_model()
    model.graph.initializer.append(
        numpy_helper.from_array(RNG.normal(size=4).astype(np.float32), "branch_only")
    )
    # One branch reads an initializer that no node of the main graph reads, the other a BN parameter.
    _with_if(model, _branch_reading("branch_only", [4]), _branch_reading("mean", [4]), [4])
    onnx.checker.check_model(model, full_check=True)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    result = preprocess(model)
    assert "fuse_conv_bn" in result.applied
    names = {t.name for t in result.model.graph.initializer}
    assert {"branch_only", "mean"} <= names and not {"gamma", "beta", "var"} & names
    onnx.checker.check_model(result.model, full_check=True)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        for got, want in zip(run_all(result.model, feeds), run_all(model, feeds), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fuse_conv_bn_leaves_a_parameter_the_caller_may_override() -> None:
    model = conv_bn_model()
    model.graph.input.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, [4]))
    result = FuseConvBatchNorm().call(model)
    assert not result.modified
    assert any("mean is an initializer that is also a graph input" in note for note in result.notes)


def test_ir3_model_is_read_by_the_ir4_convention() -> None:
    from quantcli.preprocess.ir import NormalizeIR

    model = conv_bn_model()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    model.ir_version = 3
    onnx.checker.check_model(model, full_check=True)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    expected = run(model, x)
    assert "fuse_conv_bn" in preprocess(model).applied  # its initializers are constants
    result = NormalizeIR().call(model)
    assert result.modified and result.model.ir_version == 4
    assert [i.name for i in result.model.graph.input] == ["x"]  # what onnxruntime asked for
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_array_equal(run(result.model, x), expected)


def test_bypassed_identity_is_renamed_inside_subgraphs_too() -> None:
    w = numpy_helper.from_array(RNG.normal(size=(3, 3)).astype(np.float32), "w")
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Identity", ["w"], ["w_id"], name="id"),
                helper.make_node("MatMul", ["x", "w_id"], ["y"], name="mm"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
            [w],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    _with_if(model, _branch_reading("w_id", [3, 3]), _branch_reading("x", [3, 3]), [3, 3])
    feeds = {"x": RNG.normal(size=(3, 3)).astype(np.float32), "cond": np.array(True)}
    expected = run_all(model, feeds)
    result = FoldConstants().call(model)
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "If"]
    assert [t.name for t in result.model.graph.initializer] == ["w"]  # no copy under the old name
    onnx.checker.check_model(result.model, full_check=True)
    for got, want in zip(run_all(result.model, feeds), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_identity_stays_where_a_subgraph_has_a_tensor_of_the_same_name() -> None:
    # The Loop body's carried value is named like the outer weight: renaming its read of `w_id` to
    # `w` would read the body's own value instead.
    body = helper.make_graph(
        [helper.make_node("Add", ["w", "w_id"], ["w_next"]), helper.make_node("Identity", ["c"], ["c_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("w_next", TensorProto.FLOAT, [3, 3]),
        ],
    )
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Identity", ["w"], ["w_id"], name="id"),
                helper.make_node("Loop", ["trip", "", "x"], ["y"], name="loop", body=body),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
            [
                numpy_helper.from_array(np.ones((3, 3), np.float32), "w"),
                numpy_helper.from_array(np.array(2, np.int64), "trip"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.checker.check_model(model, full_check=True)
    x = RNG.normal(size=(3, 3)).astype(np.float32)
    expected = run(model, x)
    result = preprocess(model)
    loop = result.model.graph.node[-1]
    assert list(loop.attribute[0].g.node[0].input) == ["w", "w_id"]  # the Identity's value is kept as w_id
    onnx.checker.check_model(result.model, full_check=True)
    np.testing.assert_array_equal(run(result.model, x), expected)


def test_nodes_over_an_overridable_initializer_are_not_folded() -> None:
    a = numpy_helper.from_array(np.full(3, 2.0, np.float32), "a")
    b = numpy_helper.from_array(np.full(3, 5.0, np.float32), "b")
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["x", "ab"], ["y"])],
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("x", "a")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
            [a, b],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    from quantcli.preprocess.initializer_inputs import DropInitializerInputs

    folded = FoldConstants().call(copy_model(model)).model  # the pass alone keeps `a` overridable
    assert [n.op_type for n in folded.graph.node] == ["Mul", "Add"]
    feeds = {"x": np.zeros(3, np.float32), "a": np.ones(3, np.float32)}  # `a` overridden
    np.testing.assert_array_equal(run_all(folded, feeds)[0], np.full(3, 5.0, np.float32))
    # convert's preprocessing first makes `a` a constant (it warns), and then folds it
    assert DropInitializerInputs in DEFAULT_PASSES
    result = preprocess(model)
    assert [i.name for i in result.model.graph.input] == ["x"]
    np.testing.assert_array_equal(
        run_all(result.model, {"x": np.zeros(3, np.float32)})[0], np.full(3, 10.0, np.float32)
    )
