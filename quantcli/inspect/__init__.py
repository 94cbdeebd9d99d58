"""`quantcli inspect`: an ONNX model read back as facts (nothing here prints; report/inspect.py renders)."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from quantcli.graph import GraphIndex
from quantcli.inspect.facts import (
    FORMATS,
    ComputeNode,
    DtypeBytes,
    ExternalFile,
    FileFacts,
    Finding,
    Inspection,
    QParams,
    Quantization,
    Stats,
    TensorFacts,
    ValueFacts,
)
from quantcli.inspect.findings import _findings
from quantcli.inspect.quantization import (
    FLOAT_COMPUTE,
    INTEGER_COMPUTE,
    OTHER_INTEGER_OPS,
    OUTPUT_QPARAMS,
    Q_OPS,
    SHAPE_ONLY,
    UNARY_QLINEAR,
    _compute_node,
    _domain,
    _is_compute,
    _QRef,
    _qrefs,
    _quantization,
    _tensor_rows,
)
from quantcli.inspect.reading import (
    _checker_error,
    _constant_nodes,
    _decode,
    _elem_types,
    _external_files,
    _parameters,
    _value_facts,
    _Values,
    dtype_name,
    tensor_bytes,
)
from quantcli.inspect.runtime import _onnxruntime_graph, _ort_ops
from quantcli.model_io import check_model_path, load_model

__all__ = [
    "FLOAT_COMPUTE",
    "FORMATS",
    "INTEGER_COMPUTE",
    "OTHER_INTEGER_OPS",
    "OUTPUT_QPARAMS",
    "Q_OPS",
    "SHAPE_ONLY",
    "UNARY_QLINEAR",
    "ComputeNode",
    "DtypeBytes",
    "ExternalFile",
    "FileFacts",
    "Finding",
    "Inspection",
    "QParams",
    "Quantization",
    "Stats",
    "TensorFacts",
    "ValueFacts",
    "dtype_name",
    "inspect_model",
    "tensor_bytes",
]


_KEEP_LOADED = 64 * 2**20  # bytes of model file kept in memory while the checker and onnxruntime read it


def inspect_model(
    path: str | Path, *, nodes: bool = False, tensors: bool = False, use_ort: bool = True
) -> Inspection:
    """Everything `quantcli inspect` reports about the model at `path`; BadModelError if unreadable."""
    path = check_model_path(path)
    # The model is loaded without external data: weights are decoded only where a check needs them.
    # onnx.checker, onnxruntime and our own load each hold a copy of the weights: one after the
    # other, the peak memory is one copy's, not three (a big file is read again after them).
    model = load_model(path, external_data=False)
    external = _external_files(model.graph, path.parent)
    refused = next((e.problem for e in external if e.problem), None)
    big = path.stat().st_size > _KEEP_LOADED
    if big:
        del model
    if refused is None:
        checker_error = _checker_error(path)
        ort_error, optimized = _onnxruntime_graph(path) if use_ort else (None, None)
    else:  # neither is given a model whose data lies outside its directory
        checker_error = f"not run: {refused}"
        ort_error, optimized = (checker_error if use_ort else None), None
    if big:
        model = load_model(path, external_data=False)
    g = model.graph
    index = GraphIndex.of(model)
    # _decode by name, so that patching quantcli.inspect._decode sees every decode (tests count them)
    values = _Values(g, path.parent, decode=_decode)
    values.read_external = tensors
    types = _elem_types(model)
    facts = FileFacts(
        path=path,
        bytes=path.stat().st_size,
        external=external,
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        checker_error=checker_error,
        ort_checked=use_ort,
        ort_error=ort_error,
        not_run=refused,
    )
    refs = _qrefs(g, index, values, types)
    by_node: dict[int, list[_QRef]] = defaultdict(list)  # id(NodeProto): protobuf messages are unhashable
    for r in refs:
        by_node[id(r.node)].append(r)
    compute_nodes = [n for n in g.node if _is_compute(n)]
    compute = [_compute_node(n, index, values, types, by_node) for n in compute_nodes]
    if optimized is not None:
        for c, op in zip(compute, _ort_ops(compute_nodes, optimized.graph), strict=True):
            c.ort_op = op
    quant = _quantization(g, compute, refs, values)
    findings = _findings(facts, g, index, refs, values, types, optimized)
    return Inspection(
        file=facts,
        inputs=[_value_facts(v) for v in g.input if v.name in index.graph_inputs],
        outputs=[_value_facts(v) for v in g.output],
        operators=dict(Counter((_domain(n), n.op_type) for n in g.node).most_common()),
        parameters=_parameters(g, facts.total_bytes),
        constant_nodes=_constant_nodes(g),
        quantization=quant,
        findings=findings,
        tensors=_tensor_rows(g, index, refs) if tensors else None,
        show_nodes=nodes,
    )
