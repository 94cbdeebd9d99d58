"""Probe which ONNX op types onnxruntime's CPU provider runs natively in float16.

Dev-only script; the result is the `FP16_CPU_KERNELS` constant in `quantcli/quantize/fp16.py`.
For each candidate op it builds a one-node model whose float tensors are float16 (graph inputs,
so nothing is constant-folded), opens it with onnxruntime at ORT_ENABLE_BASIC and
`optimized_model_filepath` set, and reads the saved graph back. onnxruntime's
InsertCastTransformer puts Casts to float32 around every node it has no float16 kernel for
(their names start with "InsertedPrecisionFreeCast_"); a one-node graph has no input edges, so
its "isolated float16 node" rule cannot fire. An op is native when the session opens, runs, the
saved graph still has the node (function ops are inlined), and it has no Cast onnxruntime inserted.

Run it from the repository root::

    python scripts/probe_fp16_kernels.py          # prints the sorted set, one op a line
    python scripts/probe_fp16_kernels.py --table  # every candidate and its verdict

The answer depends on the onnxruntime version and the machine (MLAS registers more float16
kernels on ARM64); record both beside the constant.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F16 = TensorProto.FLOAT16


@dataclass(frozen=True)
class Probe:
    """One candidate: its float16 data inputs (shapes), constant inputs, attributes and outputs.

    `inputs` lists, in the op's input order, either a shape (a float16 graph input fed random
    values) or a numpy array (a graph input of that dtype, fed that value: indices, axes, shapes);
    None is an omitted input. No input is an initializer, so onnxruntime cannot fold the node away.
    """

    op_type: str
    inputs: tuple = ((2, 3, 4, 4),)
    attrs: dict = field(default_factory=dict)
    outputs: int = 1
    opset: int = 17


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


_X = (2, 3, 4, 4)
_UNARY = (
    "Abs Acos Acosh Asin Asinh Atan Atanh Ceil Cos Cosh Elu Erf Exp Floor HardSigmoid HardSwish "
    "Identity IsNaN LeakyRelu Log Neg Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin "
    "Sinh Softplus Softsign Sqrt Tan Tanh ThresholdedRelu"
).split()
_BINARY = "Add Sub Mul Div Pow Max Min Sum Mean Equal Less Greater LessOrEqual GreaterOrEqual PRelu".split()
_REDUCE = "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()

CANDIDATES: tuple[Probe, ...] = (
    *(Probe(op) for op in _UNARY),
    Probe("Gelu", opset=20),
    Probe("Mish", opset=18),
    Probe("IsInf", opset=20),
    *(Probe(op, (_X, _X)) for op in _BINARY),
    Probe("Mod", (_X, _X), {"fmod": 1}),
    Probe("Clip", (_X, (), ())),
    Probe("Where", (np.ones(_X, dtype=bool), _X, _X)),
    # Reductions: opset 18 takes axes as an input for all of them.
    *(Probe(op, (_X, _i64(1)), opset=18) for op in _REDUCE),
    Probe("ArgMax", (_X,), {"axis": 1}),
    Probe("ArgMin", (_X,), {"axis": 1}),
    Probe("TopK", (_X, _i64(2)), outputs=2),
    Probe("CumSum", (_X, np.array(1, dtype=np.int64))),
    Probe("MatMul", ((2, 3, 4, 5), (5, 6))),
    Probe("Gemm", ((2, 5), (6, 5), (6,)), {"transB": 1}),
    Probe("Gemm", ((2, 5), (5, 6))),
    Probe("Einsum", ((2, 3), (3, 4)), {"equation": "ij,jk->ik"}),
    Probe("Conv", ((1, 3, 8, 8), (4, 3, 3, 3), (4,)), {"pads": [1, 1, 1, 1]}),
    Probe("ConvTranspose", ((1, 3, 8, 8), (3, 4, 3, 3), (4,))),
    Probe("MaxPool", ((1, 3, 8, 8),), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Probe("AveragePool", ((1, 3, 8, 8),), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    Probe("LpPool", ((1, 3, 8, 8),), {"kernel_shape": [2, 2]}),
    Probe("GlobalAveragePool", ((1, 3, 8, 8),)),
    Probe("GlobalMaxPool", ((1, 3, 8, 8),)),
    Probe("BatchNormalization", ((1, 3, 8, 8), (3,), (3,), (3,), (3,))),
    Probe("InstanceNormalization", ((1, 3, 8, 8), (3,), (3,))),
    Probe("LayerNormalization", ((2, 5, 8), (8,), (8,)), {"axis": -1}),
    Probe("GroupNormalization", ((1, 4, 8, 8), (2,), (2,)), {"num_groups": 2}, opset=18),
    Probe("LRN", ((1, 3, 8, 8),), {"size": 3}),
    Probe("MeanVarianceNormalization", ((1, 3, 8, 8),)),
    Probe("LpNormalization", (_X,)),
    Probe("Softmax", (_X,)),
    Probe("LogSoftmax", (_X,)),
    Probe("Hardmax", (_X,)),
    Probe("Dropout", (_X,)),
    Probe("Reshape", (_X, _i64(2, -1))),
    Probe("Flatten", (_X,)),
    Probe("Transpose", (_X,), {"perm": [0, 2, 3, 1]}),
    Probe("Squeeze", ((2, 1, 4), _i64(1))),
    Probe("Unsqueeze", (_X, _i64(0))),
    Probe("Concat", (_X, _X), {"axis": 1}),
    Probe("Split", (_X,), {"axis": 1}, outputs=3),
    Probe("Slice", (_X, _i64(0), _i64(2), _i64(1))),
    Probe("Gather", (_X, _i64(0, 2)), {"axis": 1}),
    Probe("GatherElements", (_X, np.zeros(_X, dtype=np.int64)), {"axis": 1}),
    Probe("GatherND", (_X, np.zeros((2, 1), dtype=np.int64))),
    Probe("ScatterElements", (_X, np.zeros(_X, dtype=np.int64), _X), {"axis": 1}),
    Probe("ScatterND", (_X, np.zeros((1, 1), dtype=np.int64), (1, 3, 4, 4))),
    Probe("Expand", ((1, 3, 1, 4), _i64(2, 3, 4, 4))),
    Probe("Tile", (_X, _i64(1, 2, 1, 1))),
    Probe("Pad", (_X, _i64(0, 0, 1, 1, 0, 0, 1, 1))),
    Probe("Resize", ((1, 3, 4, 4), None, np.array([1, 1, 2, 2], dtype=np.float32)), {"mode": "nearest"}),
    Probe("Resize", ((1, 3, 4, 4), None, np.array([1, 1, 2, 2], dtype=np.float32)), {"mode": "linear"}),
    Probe("DepthToSpace", ((1, 8, 2, 2),), {"blocksize": 2}),
    Probe("SpaceToDepth", ((1, 2, 4, 4),), {"blocksize": 2}),
    Probe("Shape", (_X,)),
    Probe("Size", (_X,)),
    Probe("NonZero", (_X,)),
    Probe("Trilu", ((4, 4),)),
    Probe("Cast", (_X,), {"to": TensorProto.INT64}),
    Probe("Cast", (np.ones(_X, dtype=np.int64),), {"to": F16}),
    Probe("CastLike", (np.ones(_X, dtype=np.int64), (1,))),
    Probe("ConstantOfShape", (_i64(2, 3),), {"value": numpy_helper.from_array(np.ones(1, np.float16))}),
    Probe("EyeLike", ((4, 4),)),
    Probe("RandomNormalLike", (_X,)),
    Probe("RandomUniformLike", (_X,)),
    Probe("OneHot", (_i64(0, 2), _i64(3), np.array([0, 1], np.float16))),
)


def _model(probe: Probe) -> onnx.ModelProto:
    inputs, names = [], []
    for i, spec in enumerate(probe.inputs):
        name = f"in{i}"
        if spec is None:
            names.append("")
            continue
        names.append(name)
        if isinstance(spec, np.ndarray):
            dtype = helper.np_dtype_to_tensor_dtype(spec.dtype)
            inputs.append(helper.make_tensor_value_info(name, dtype, list(spec.shape)))
        else:
            # A symbolic first dimension, so that Shape/Size are not folded from a static shape.
            dims = ["N", *spec[1:]] if spec else []
            inputs.append(helper.make_tensor_value_info(name, F16, dims))
    outs = [f"out{i}" for i in range(probe.outputs)]
    node = helper.make_node(probe.op_type, names, outs, name="probe", **probe.attrs)
    graph = helper.make_graph([node], "probe", inputs, [])
    graph.output.extend(onnx.ValueInfoProto(name=o) for o in outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", probe.opset)])
    model.ir_version = 8 if probe.opset <= 17 else 9
    typed = onnx.shape_inference.infer_shapes(model)
    known = {
        v.name: v for v in (*typed.graph.value_info, *typed.graph.output) if v.type.HasField("tensor_type")
    }
    del model.graph.output[:]
    # Function ops (Mish, GroupNormalization) may leave their output untyped: float16, any shape.
    model.graph.output.extend(known.get(o) or helper.make_tensor_value_info(o, F16, None) for o in outs)
    return model  # onnxruntime checks it (onnx.checker wants output shapes that inference may not know)


def _feeds(probe: Probe) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for i, spec in enumerate(probe.inputs):
        if isinstance(spec, np.ndarray):
            feeds[f"in{i}"] = spec
        elif spec is not None:
            feeds[f"in{i}"] = rng.uniform(0.5, 1.5, size=spec).astype(np.float16)
    return feeds


def verdict(probe: Probe, work_dir: Path) -> str:
    """The verdict on one candidate: native, cast (onnxruntime puts Casts around it), inlined, or fails: why."""
    try:
        model = _model(probe)
    except Exception as exc:  # noqa: BLE001 - any failure to build is a verdict to print
        return f"fails: model: {str(exc).splitlines()[0][:80]}"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    saved = work_dir / f"{probe.op_type}.onnx"
    opts.optimized_model_filepath = str(saved)
    try:
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        session.run(None, _feeds(probe))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated exception types
        return f"fails: {str(exc).splitlines()[0][:80]}"
    ran = onnx.load(str(saved))
    if not any(n.name == "probe" and n.op_type == probe.op_type for n in ran.graph.node):
        # A function op (Gelu, CastLike, ReduceLogSumExp) expanded into other ops, whose bodies
        # may cast to float32 themselves: no kernel of its own, so not native.
        return "inlined"
    inserted = [n for n in ran.graph.node if n.op_type == "Cast" and n.name.startswith("Inserted")]
    return "cast" if inserted else "native"


def probe_all(candidates: tuple[Probe, ...] = CANDIDATES) -> dict[str, str]:
    """Verdict per op type ("native", "cast", "inlined", "fails: ..."); an op probed several
    ways is native only if every way is."""
    verdicts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for probe in candidates:
            v = verdict(probe, Path(tmp))
            if verdicts.get(probe.op_type, "native") == "native":
                verdicts[probe.op_type] = v
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print every candidate and its verdict")
    args = parser.parse_args()
    verdicts = probe_all()
    print(f"# onnxruntime {ort.__version__}, {platform.machine()}", file=sys.stderr)
    if args.table:
        for op, v in sorted(verdicts.items()):
            print(f"{op:28} {v}")
    else:
        for op in sorted(op for op, v in verdicts.items() if v == "native"):
            print(op)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
