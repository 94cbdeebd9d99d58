"""What onnxruntime's CPU provider makes of a model: does it load, which ops run, which DQs stay unfused."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import onnx

from quantcli.inspect.facts import Finding
from quantcli.inspect.quantization import FLOAT_COMPUTE, Q_OPS, _output


def _onnxruntime_graph(path: Path) -> tuple[str | None, onnx.ModelProto | None]:
    """(load error, optimized graph) of onnxruntime's CPU provider at ORT_ENABLE_EXTENDED (the QDQ
    fusions), the optimized graph written into a temporary directory."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its load error is reported as a fact, not logged on stderr
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.add_session_config_entry("session.disable_prepacking", "1")
    with tempfile.TemporaryDirectory(prefix="quantcli-inspect-") as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        # Weights of the optimized copy go to a side file that is never read back.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.data"
        )
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        try:
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            text = str(exc).strip()
            return (text.splitlines()[0] if text else type(exc).__name__), None
        try:
            return None, onnx.load(opts.optimized_model_filepath, load_external_data=False)
        except Exception:  # noqa: BLE001 - the model loads; only the fusion check is lost
            return None, None


def _ort_ops(nodes: list[onnx.NodeProto], optimized: onnx.GraphProto) -> list[str | None]:
    """The op onnxruntime runs for each node: the node of the same name (its QDQ fusions keep the
    name), or else the one node that reads the same first two inputs (FusedGemm, FusedMatMul ...)."""
    by_name: dict[str, list[str]] = defaultdict(list)
    by_inputs: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for n in optimized.node:
        by_name[n.name].append(n.op_type)
        if n.op_type not in Q_OPS:
            by_inputs[tuple(n.input[:2])].append(n.op_type)
    ops = []
    for node in nodes:
        same = by_name.get(node.name, []) if node.name else []
        same = same or by_inputs.get(tuple(node.input[:2]), [])
        ops.append(same[0] if len(same) == 1 else None)
    return ops


def _not_fused(g: onnx.GraphProto, optimized: onnx.ModelProto) -> list[Finding]:
    """DequantizeLinear of an activation that survives in onnxruntime's optimized graph and feeds ops:
    onnxruntime runs it (and a float op after it) instead of an integer kernel."""
    og = optimized.graph
    constants = {t.name for t in og.initializer} | {
        o for n in og.node if n.op_type == "Constant" for o in n.output
    }
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in og.node:
        for i in n.input:
            consumers[i].append(n)
    original = {n.name for n in g.node if n.op_type == "DequantizeLinear"}
    by_input = defaultdict(list)
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input:
            by_input[n.input[0]].append(n.name)
    feeds_by_dq: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in og.node:
        if n.op_type != "DequantizeLinear" or not n.input or n.input[0] in constants:
            continue
        # onnxruntime may duplicate a DQ per consumer: report them under the original's name
        name = n.name if n.name in original else (by_input[n.input[0]] or [n.name])[0]
        feeds_by_dq[name] += consumers.get(_output(n), [])  # none: a graph output, the model's result
    zero_point_types = {t.name: t.data_type for t in og.initializer}
    sixteen_bit = {
        n.name if n.name in original else (by_input[n.input[0]] or [n.name])[0]
        for n in og.node
        if n.op_type == "DequantizeLinear"
        and len(n.input) > 2
        and zero_point_types.get(n.input[2]) in (onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
    }
    found = []
    wide = [name for name, feeds in feeds_by_dq.items() if feeds and name in sixteen_bit]
    if wide:  # expected, not a defect: one finding, not one per tensor
        found.append(
            Finding(
                "dq-not-fused",
                "info",
                wide[0],
                f"{len(wide)} DequantizeLinear of 16-bit activations run, each before a float op: "
                "onnxruntime has no 16-bit integer kernels (A16W8 is an accuracy option, not a speed one)",
            )
        )
    for name, feeds in feeds_by_dq.items():
        if not feeds or name in sixteen_bit:
            continue
        ops = ", ".join(f"{c.op_type} {c.name}" for c in feeds)
        severity = "warning" if any(c.op_type in FLOAT_COMPUTE for c in feeds) else "info"
        found.append(
            Finding(
                "dq-not-fused",
                severity,
                name,
                f"DequantizeLinear {name} is not fused by onnxruntime: it runs, and feeds float {ops}",
            )
        )
    return found
