"""Generated graphs through every convert mode: the use-def cases each rewriter must respect.

Each graph is built from a seeded RNG out of small blocks: MatMul/Gemm/Conv weights, weights shared
between nodes, If branches and Loop/Scan bodies that read outer initializers (some only there, some
shadowed by a body input of the same name), an initializer that is a graph output, an initializer
that is also a graph input (an overridable default at IR >= 4; IR 3 lists every initializer as an
input), a graph input that is also a graph output, Conv+BatchNormalization pairs, and weights behind
Identity/Constant nodes. Every mode converts each graph through the Python API; the result must be
exit 0 (no generated graph is one a mode cannot do), pass onnx.checker's full check, load in
onnxruntime, take the float model's inputs (the required ones the same; optional ones, an
initializer's overridable default, either become constants (convert warns) or, when fed, mean what
they meant) and give outputs close to the float model's. Outcomes per mode are printed
(`pytest -s tests/test_property.py`); `pytest -m sweep tests/test_property.py` runs a larger sweep.
"""

from __future__ import annotations

import collections
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantcli.api import ConvertOptions, convert
from quantcli.errors import ExitCode, QuantcliError

GRAPHS = 40
SWEEP_GRAPHS = 400
MODES = ("static", "dynamic", "weights-int8", "weights-int4", "fp16", "bf16", "mixed")
CALIBRATED = ("static", "mixed")
SAMPLES = 5  # 4 calibrate, 1 is held out for convert's own evaluation
D = 32  # features of the MatMul chain: MatMulNBits needs K, N >= 16
F = TensorProto.FLOAT
# Loose per-mode bounds on each output's relative L2 error, |quantized - float| / |float|.
# A wrong weight, a transposed one or a swapped branch gives about 1.4 (uncorrelated outputs);
# INT4 loses ~0.1 per layer on these random weights, and the longest chains have over ten layers
# (the 400-graph sweep's worst was 0.76).
TOLERANCE = {
    "static": 0.3,
    "mixed": 0.3,
    "dynamic": 0.15,
    "weights-int8": 0.1,
    "weights-int4": 0.9,
    "fp16": 0.01,
    "bf16": 0.03,
}
FEATURES = (
    "gemm",
    "shared",
    "if",
    "if_only",
    "loop",
    "scan",
    "shadow",
    "init_output",
    "init_input",
    "input_output",
    "conv_bn",
    "conv_head",
    "identity_weight",
    "nested",
)


@dataclass
class Graph:
    """A model under construction: nodes, initializers, inputs and outputs of the main graph."""

    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)  # name -> shape of every weight made by weight()
    counter: int = 0

    def name(self, base: str) -> str:
        self.counter += 1
        return f"{base}{self.counter}"

    def weight(self, base: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        name = self.name(base)
        values = (self.rng.normal(size=shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(values, name))
        self.weights[name] = list(shape)
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> list[str]:  # noqa: ANN003
        outs = [self.name(op.lower() + "_out") for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs


def _branch(name: str, nodes: list, output: str, shape: list) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(output, F, shape)])


def build_graph(seed: int) -> tuple[onnx.ModelProto, set[str]]:
    """A valid float model made of a random selection of FEATURES, and the features it has."""
    rng = random.Random(seed)
    g = Graph(np.random.default_rng(seed))
    # input_output is rarer: static and mixed cannot do it yet (KNOWN), and it hides the rest there.
    features = {f for f in FEATURES if rng.random() < (0.25 if f == "input_output" else 0.45)}
    ir3 = rng.random() < 0.2
    if ir3:
        features.discard("init_input")  # every initializer is an input already
    g.inputs.append(helper.make_tensor_value_info("x", F, [2, D]))
    h = "x"
    w_first = g.weight("W", (D, D))
    (h,) = g.node("MatMul", [h, w_first])
    if "gemm" in features:
        trans = rng.random() < 0.5
        w = g.weight("G", (D, D))
        b = g.weight("Gb", (D,), 0.1)
        (h,) = g.node("Gemm", [h, w, b], transB=int(trans))
    if "shared" in features:
        w = g.weight("S", (D, D))
        (a,) = g.node("MatMul", [h, w])
        (a,) = g.node("Relu", [a])
        (h,) = g.node("MatMul", [a, w])
    if "identity_weight" in features:
        if rng.random() < 0.5:
            w = g.weight("I", (D, D))
            (w,) = g.node("Identity", [w])
        else:
            w = g.name("K")
            g.nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [w],
                    name=g.name("Constant"),
                    value=numpy_helper.from_array((g.rng.normal(size=(D, D)) * 0.3).astype(np.float32)),
                )
            )
        (h,) = g.node("MatMul", [h, w])
    if "if" in features or "if_only" in features:
        (mean,) = g.node("ReduceMean", [h], keepdims=0)
        zero = g.name("zero")
        g.inits.append(numpy_helper.from_array(np.array(rng.choice([-1e4, 1e4]), np.float32), zero))
        (cond,) = g.node("Greater", [mean, zero])
        # then: MatMul with an outer weight (read only inside the branch with "if_only");
        # else: MatMul with the first weight, read outside too.
        w_then = g.weight("T", (D, D))
        then_out, else_out = g.name("then_y"), g.name("else_y")
        then = _branch("then", [helper.make_node("MatMul", [h, w_then], [then_out])], then_out, [2, D])
        other = w_first if "if_only" in features else w_then
        bias = g.weight("E", (D,), 0.1)
        else_mid = g.name("else_mid")
        orelse = _branch(
            "else",
            [
                helper.make_node("MatMul", [h, other], [else_mid]),
                helper.make_node("Add", [else_mid, bias], [else_out]),
            ],
            else_out,
            [2, D],
        )
        if "if" in features and "if_only" not in features:
            (h,) = g.node("MatMul", [h, w_then])  # the branch's weight is read outside too
        (h,) = g.node("If", [cond], then_branch=then, else_branch=orelse)
    if "loop" in features:
        trip = g.name("trip")
        g.inits.append(numpy_helper.from_array(np.array(2, np.int64), trip))
        w_loop = g.weight("L", (D, D), 0.15)
        v, v_out, c, c_out, mid = (g.name(s) for s in ("v", "v_out", "c", "c_out", "mid"))
        body = helper.make_graph(
            [
                helper.make_node("MatMul", [v, w_loop], [mid]),
                helper.make_node("Tanh", [mid], [v_out]),
                helper.make_node("Identity", [c], [c_out]),
            ],
            "loop_body",
            [
                helper.make_tensor_value_info(g.name("i"), TensorProto.INT64, []),
                helper.make_tensor_value_info(c, TensorProto.BOOL, []),
                helper.make_tensor_value_info(v, F, [2, D]),
            ],
            [
                helper.make_tensor_value_info(c_out, TensorProto.BOOL, []),
                helper.make_tensor_value_info(v_out, F, [2, D]),
            ],
        )
        (h,) = g.node("Loop", [trip, "", h], body=body)
        if rng.random() < 0.5:
            (h,) = g.node("MatMul", [h, w_loop])  # the body's weight is read outside too
    if "scan" in features:
        s0 = g.name("s0")
        g.inits.append(numpy_helper.from_array(np.zeros(D, np.float32), s0))
        w_scan = g.weight("C", (D, D))
        s, row, s_out, r = (g.name(n) for n in ("s", "row", "s_out", "r"))
        body = helper.make_graph(
            [helper.make_node("MatMul", [row, w_scan], [r]), helper.make_node("Add", [s, r], [s_out])],
            "scan_body",
            [helper.make_tensor_value_info(s, F, [D]), helper.make_tensor_value_info(row, F, [D])],
            [
                helper.make_tensor_value_info(s_out, F, [D]),
                helper.make_tensor_value_info(g.name("rows"), F, [D]),
            ],
        )
        # The second body output is the row's product (an Identity keeps names unique).
        body.node.append(helper.make_node("Identity", [r], [body.output[1].name]))
        state, h = g.node("Scan", [s0, h], n_out=2, num_scan_inputs=1, body=body)
        g.outputs.append(helper.make_tensor_value_info(state, F, [D]))
    if "nested" in features:
        # A Loop body holding an If whose branch reads an outer weight and an outer threshold.
        trip = g.name("trip")
        g.inits.append(numpy_helper.from_array(np.array(2, np.int64), trip))
        w_nested = g.weight("N", (D, D), 0.15)
        low = g.name("low")
        g.inits.append(numpy_helper.from_array(np.array(-1e4, np.float32), low))
        v, c, c_out, v_out, m, cond, mid, t_out, e_out = (
            g.name(n) for n in ("v", "c", "c_out", "v_out", "m", "cond", "mid", "t", "e")
        )
        then = _branch(
            "nested_then",
            [helper.make_node("MatMul", [v, w_nested], [mid]), helper.make_node("Tanh", [mid], [t_out])],
            t_out,
            [2, D],
        )
        orelse = _branch("nested_else", [helper.make_node("Identity", [v], [e_out])], e_out, [2, D])
        body = helper.make_graph(
            [
                helper.make_node("ReduceMean", [v], [m], keepdims=0),
                helper.make_node("Greater", [m, low], [cond]),
                helper.make_node("If", [cond], [v_out], then_branch=then, else_branch=orelse),
                helper.make_node("Identity", [c], [c_out]),
            ],
            "nested_body",
            [
                helper.make_tensor_value_info(g.name("i"), TensorProto.INT64, []),
                helper.make_tensor_value_info(c, TensorProto.BOOL, []),
                helper.make_tensor_value_info(v, F, [2, D]),
            ],
            [
                helper.make_tensor_value_info(c_out, TensorProto.BOOL, []),
                helper.make_tensor_value_info(v_out, F, [2, D]),
            ],
        )
        (h,) = g.node("Loop", [trip, "", h], body=body)
    if "shadow" in features:
        # A Loop body whose carried value has the name of an outer weight: its reads are its own.
        w_shadow = g.weight("H", (D, D))
        (h,) = g.node("MatMul", [h, w_shadow])
        trip = g.name("trip")
        g.inits.append(numpy_helper.from_array(np.array(1, np.int64), trip))
        c, c_out, v_out = g.name("c"), g.name("c_out"), g.name("v_out")
        body = helper.make_graph(
            [helper.make_node("Relu", [w_shadow], [v_out]), helper.make_node("Identity", [c], [c_out])],
            "shadow_body",
            [
                helper.make_tensor_value_info(g.name("i"), TensorProto.INT64, []),
                helper.make_tensor_value_info(c, TensorProto.BOOL, []),
                helper.make_tensor_value_info(w_shadow, F, [2, D]),
            ],
            [
                helper.make_tensor_value_info(c_out, TensorProto.BOOL, []),
                helper.make_tensor_value_info(v_out, F, [2, D]),
            ],
        )
        (h,) = g.node("Loop", [trip, "", h], body=body)
    (y,) = g.node("MatMul", [h, g.weight("O", (D, D))])
    g.outputs.insert(0, helper.make_tensor_value_info(y, F, [2, D]))
    if "conv_bn" in features or "conv_head" in features:
        g.inputs.append(helper.make_tensor_value_info("img", F, [1, 3, 8, 8]))
        wc = g.weight("Wc", (4, 3, 3, 3))
        conv_in = ["img", wc] + ([g.weight("Bc", (4,), 0.1)] if rng.random() < 0.5 else [])
        (c,) = g.node("Conv", conv_in, pads=[1, 1, 1, 1])
        bn = []
        if "conv_bn" in features:
            for base, values in (
                ("gamma", g.rng.uniform(0.5, 2, 4)),
                ("beta", g.rng.normal(size=4) * 0.1),
                ("mean", g.rng.normal(size=4) * 0.1),
                ("var", g.rng.uniform(0.5, 2, 4)),
            ):
                bn.append(g.name(base))
                g.inits.append(numpy_helper.from_array(values.astype(np.float32), bn[-1]))
            (c,) = g.node("BatchNormalization", [c, *bn])
        (c,) = g.node("Relu", [c])
        if "conv_head" in features:  # Flatten -> Gemm: static mode may store its weight NHWC-ordered
            (c,) = g.node("Flatten", [c])
            trans = rng.random() < 0.5
            wh = g.weight("Wh", (10, 256) if trans else (256, 10), 0.1)
            (c,) = g.node("Gemm", [c, wh, g.weight("Bh", (10,), 0.1)], transB=int(trans))
            g.outputs.append(helper.make_tensor_value_info(c, F, [1, 10]))
        else:
            g.outputs.append(helper.make_tensor_value_info(c, F, [1, 4, 8, 8]))
        if bn and rng.random() < 0.4 and not ir3:  # an overridable BN parameter: must not be folded
            g.inputs.append(helper.make_tensor_value_info(bn[2], F, [4]))
    weights = sorted(g.weights)
    as_output = rng.choice(weights)
    if "init_output" in features:
        g.outputs.append(helper.make_tensor_value_info(as_output, F, g.weights[as_output]))
    if "init_input" in features:
        as_input = rng.choice([w for w in weights if w != as_output])
        g.inputs.append(helper.make_tensor_value_info(as_input, F, g.weights[as_input]))
    if "input_output" in features:
        g.outputs.append(helper.make_tensor_value_info("x", F, [2, D]))
    if ir3:
        listed = {i.name for i in g.inputs}
        g.inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in g.inits
            if t.name not in listed
        ]
    graph = helper.make_graph(g.nodes, f"property{seed}", g.inputs, g.outputs, g.inits)
    opset = rng.choice([13, 17])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if ir3 else 8
    onnx.checker.check_model(model, full_check=True)
    return model, features | ({"ir3"} if ir3 else set())


def required_inputs(session: ort.InferenceSession) -> dict[str, str]:
    return {i.name: i.type for i in session.get_inputs()}


def feeds_for(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    session = _session(model.SerializeToString())
    return {
        i.name: rng.normal(size=[d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
        for i in session.get_inputs()
    }


def _session(path: Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_mode(model_path: Path, calib: Path, mode: str, out: Path) -> tuple[int, str]:
    """Convert through the Python API: (exit code, message); 70 stands for an unexpected exception."""
    extra = {"calib": calib, "calib_samples": SAMPLES - 1} if mode in CALIBRATED else {}
    try:
        convert(ConvertOptions(model=model_path, output=out, mode=mode, check_latency=False, **extra))
    except QuantcliError as exc:
        return int(exc.exit_code), exc.message
    except Exception as exc:  # noqa: BLE001 - anything else is a quantcli bug
        return int(ExitCode.INTERNAL), f"{type(exc).__name__}: {exc}"
    return 0, ""


def check_output(source: onnx.ModelProto, out: Path, mode: str, feeds: dict[str, np.ndarray]) -> str | None:
    """Why the converted model is not a faithful replacement of the float one, or None."""
    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"fails onnx.checker: {str(exc).splitlines()[0]}"
    reference = _session(source.SerializeToString())
    try:
        candidate = _session(out)
    except Exception as exc:  # noqa: BLE001
        return f"does not load in onnxruntime: {str(exc).splitlines()[0]}"
    if required_inputs(candidate) != required_inputs(reference):
        return f"required inputs {required_inputs(candidate)} != float model's {required_inputs(reference)}"
    optional = {i.name for i in source.graph.input} - set(required_inputs(reference))
    # convert makes an initializer listed as a graph input a constant, with a warning (so that it
    # can be quantized: onnxruntime itself advises it); one that stays an input keeps its meaning.
    optional &= {i.name for i in onnx.load(str(out), load_external_data=False).graph.input}
    names = [o.name for o in reference.get_outputs()]
    if [o.name for o in candidate.get_outputs()] != names:
        return f"outputs {[o.name for o in candidate.get_outputs()]} != {names}"
    # An optional input (an initializer's default) fed by the caller must mean what it meant.
    overridden = dict(feeds)
    for t in source.graph.initializer:
        if t.name in optional and source.ir_version >= 4:
            values = numpy_helper.to_array(t)
            overridden[t.name] = (values + np.float32(0.1) * np.abs(values).mean()).astype(values.dtype)
    runs = [feeds] + ([overridden] if len(overridden) > len(feeds) else [])
    for run in runs:
        expected = reference.run(None, run)
        try:
            got = candidate.run(None, run)
        except Exception as exc:  # noqa: BLE001
            return f"does not run on the float model's inputs {sorted(run)}: {str(exc).splitlines()[0]}"
        for name, e, q in zip(names, expected, got, strict=True):
            if q.shape != e.shape or q.dtype != e.dtype:
                return f"output {name}: {q.dtype}{list(q.shape)} != {e.dtype}{list(e.shape)}"
            error = float(np.linalg.norm(q.astype(np.float64) - e)) / max(float(np.linalg.norm(e)), 1e-6)
            if not error <= TOLERANCE[mode]:
                return f"output {name} (inputs {sorted(run)}): relative error {error:.3g} > {TOLERANCE[mode]}"
    return None


# (feature, mode) -> (the symptom, a regular expression on the failure, and why) for a failure that
# a graph with that feature shows in that mode for now. Each is counted as "known" instead of failing
# the test; strict=False, as pytest's xfail: a known case that converts cleanly counts as ok, and a
# different failure of the same graph still fails. Remove an entry when its fix is merged.
_INPUT_OUTPUT = (
    r"x_prequant|Duplicate definition of name \(x\)",
    "graph input that is also a graph output: the QDQ rewriter's graph-output path gives it no "
    "producer (the static-mode branch of issue #17 fixes it)",
)
KNOWN = {("input_output", "static"): _INPUT_OUTPUT, ("input_output", "mixed"): _INPUT_OUTPUT}


def sweep(seeds: range, tmp: Path, modes: tuple[str, ...] = MODES) -> tuple[dict, list[str]]:
    """Convert the generated graphs of `seeds` in every mode: outcomes per mode, and the failures
    (the KNOWN ones are counted, and listed under "known").

    No generated graph is one that a mode cannot do (nothing in them is unsupported): every mode
    must convert every graph (exit 0) into a faithful model; any exit code but 0 or an unfaithful
    model is a failure, unless KNOWN."""
    outcomes: dict[str, collections.Counter] = {m: collections.Counter() for m in modes}
    failures: list[str] = []
    known_cases: list[str] = []
    for seed in seeds:
        model, features = build_graph(seed)
        path = tmp / f"g{seed}.onnx"
        onnx.save(model, str(path))
        data_rng = np.random.default_rng(seed)
        calib = tmp / f"calib{seed}"
        calib.mkdir()
        samples = [feeds_for(model, data_rng) for _ in range(SAMPLES)]
        for k, sample in enumerate(samples):
            np.savez(calib / f"{k}.npz", **sample)
        # Checked on a calibration sample: within the calibrated ranges, whose coverage (four samples
        # through chains of up to ten layers) is not what this test is about.
        feeds = samples[0]
        for mode in modes:
            out = tmp / f"g{seed}_{mode}.onnx"
            code, message = run_mode(path, calib, mode, out)
            problem = f"exit {code}: {message}" if code else check_output(model, out, mode, feeds)
            known = [
                why
                for f in sorted(features)
                if (f, mode) in KNOWN and problem is not None
                for symptom, why in [KNOWN[(f, mode)]]
                if re.search(symptom, problem)
            ]
            if problem is None:
                outcomes[mode]["ok"] += 1
            elif known:
                outcomes[mode]["known"] += 1
                known_cases.append(f"seed {seed} {mode}: {known[0]}")
            else:
                outcomes[mode][f"exit {code}" if code else "unfaithful"] += 1
                failures.append(f"seed {seed} {sorted(features)} {mode}: {problem}")
            out.unlink(missing_ok=True)
    outcomes["known"] = known_cases
    return outcomes, failures


def _report(count: int, outcomes: dict, record_property) -> None:  # noqa: ANN001 - pytest fixture
    """Print the outcomes per mode (`pytest -s`) and record them in the test report (junit XML)."""
    known = outcomes.pop("known")
    print(f"\n{count} generated graphs per mode")
    for mode, counter in outcomes.items():
        print(f"  {mode:13s} " + ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())))
        record_property(f"outcomes_{mode}", dict(sorted(counter.items())))
    for line in known:
        print(f"  known: {line}")
    record_property("graphs", count)


def test_generated_graphs_convert_in_every_mode(tmp_path: Path, record_property) -> None:  # noqa: ANN001
    outcomes, failures = sweep(range(GRAPHS), tmp_path)
    _report(GRAPHS, outcomes, record_property)
    assert not failures, "\n".join(failures)


@pytest.mark.sweep
def test_generated_graphs_sweep(tmp_path: Path, record_property) -> None:  # noqa: ANN001
    outcomes, failures = sweep(range(SWEEP_GRAPHS), tmp_path)
    _report(SWEEP_GRAPHS, outcomes, record_property)
    assert not failures, "\n".join(failures)
