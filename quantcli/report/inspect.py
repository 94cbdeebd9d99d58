"""Rendering of an Inspection: rich layout, plain text, or the `inspect --json` object (schema in README)."""

from __future__ import annotations

import math
from typing import Any

from quantcli import __version__
from quantcli.inspect import ComputeNode, Inspection, QParams, Stats, ValueFacts
from quantcli.report import SCHEMA_VERSION, number, out

Section = tuple[str, list[str], list[list[str]]]  # title, column headers ([] for key/value rows), rows


def _num(x: float | None) -> float | str | None:
    """A float for JSON: None stays None, NaN becomes None, infinities become strings."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else number(x)


def _stats(s: Stats, *, scales: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "tensors": s.tensors,
        "values": s.values,
        "min": _num(s.min),
        "median": _num(s.median),
        "max": _num(s.max),
    }
    if scales:
        d["histogram"] = {str(k): v for k, v in s.histogram.items()}
    else:
        d["nonzero"] = s.nonzero
    return d


def _qparams(p: QParams | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {
        "tensor": p.tensor,
        "dtype": p.dtype,
        "granularity": p.granularity,
        "axis": p.axis,
        "block_size": p.block_size,
        "scales": p.scales,
        "scale_min": _num(p.scale_min),
        "scale_max": _num(p.scale_max),
        "zero_point_min": p.zero_point_min,
        "zero_point_max": p.zero_point_max,
    }


def _value(v: ValueFacts) -> dict[str, Any]:
    return {"name": v.name, "dtype": v.dtype, "shape": v.shape}


def _node(c: ComputeNode) -> dict[str, Any]:
    return {
        "name": c.name,
        "op_type": c.op_type,
        "domain": c.domain or "ai.onnx",
        "scheme": c.scheme,
        "precision": c.precision,
        "weight": _qparams(c.weight),
        "input": _qparams(c.input),
        "output": _qparams(c.output),
        "onnxruntime_op": c.ort_op,
    }


def _ort_ops(r: Inspection) -> dict[str, int] | None:
    if not r.file.ort_checked or r.file.ort_error:
        return None
    counts: dict[str, int] = {}
    for c in r.quantization.compute:
        key = c.ort_op or "unknown"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _schemes(r: Inspection) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in r.quantization.compute:
        counts[c.scheme] = counts.get(c.scheme, 0) + 1
    return dict(sorted(counts.items()))


def inspect_to_dict(r: Inspection) -> dict[str, Any]:
    """The documented `inspect --json` object (schema_version 1, README "inspect")."""
    f, q = r.file, r.quantization
    total = f.total_bytes
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "inspect",
        "quantcli_version": __version__,
        "model": str(f.path),
        "file": {
            "bytes": f.bytes,
            "total_bytes": total,
            "external_data": [
                {"location": e.location, "bytes": e.bytes, "problem": e.problem} for e in f.external
            ],
            "ir_version": f.ir_version,
            "opsets": f.opsets,
            "producer": f.producer,
            "checker": {"passed": f.checker_error is None, "error": f.checker_error},
            "onnxruntime": {
                "checked": f.ort_checked,
                "loaded": (f.ort_error is None) if f.ort_checked else None,
                "error": f.ort_error,
            },
        },
        "inputs": [_value(v) for v in r.inputs],
        "outputs": [_value(v) for v in r.outputs],
        "operators": [
            {"domain": d or "ai.onnx", "op_type": op, "count": k} for (d, op), k in r.operators.items()
        ],
        "parameters": {
            "initializers": sum(p.tensors for p in r.parameters),
            "bytes": r.parameter_bytes,
            "share": r.parameter_bytes / total if total else 0.0,
            "by_dtype": [
                {
                    "dtype": p.dtype,
                    "tensors": p.tensors,
                    "elements": p.elements,
                    "bytes": p.bytes,
                    "share": p.share,
                }
                for p in r.parameters
            ],
            "constant_nodes": {"count": r.constant_nodes[0], "bytes": r.constant_nodes[1]},
        },
        "quantization": {
            "format": q.format,
            "op_counts": q.op_counts,
            "compute_nodes": q.compute_counts(),
            "schemes": _schemes(r),
            "onnxruntime_ops": _ort_ops(r),
            "weights": q.weight_granularity,
            "activation_dtypes": q.activation_dtypes,
            "scales": {k: _stats(v, scales=True) for k, v in q.scales.items()},
            "zero_points": {k: _stats(v, scales=False) for k, v in q.zero_points.items()},
        },
        "nodes": [_node(c) for c in q.compute] if r.show_nodes else None,
        "tensors": None
        if r.tensors is None
        else [
            {
                "name": t.name,
                "dtype": t.dtype,
                "shape": t.shape,
                "bytes": t.bytes,
                "location": t.location,
                "role": t.role,
            }
            for t in r.tensors
        ],
        "findings": [
            {"code": x.code, "severity": x.severity, "node": x.node, "tensor": x.tensor, "message": x.message}
            for x in r.findings
        ],
    }


# --- text -------------------------------------------------------------------------------------


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _shape(v: ValueFacts) -> str:
    if v.shape is None:
        return "unknown shape"
    return "[" + ", ".join("?" if d is None else str(d) for d in v.shape) + "]"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def _stats_text(s: Stats, *, scales: bool) -> str:
    text = f"{s.tensors} tensors, {s.values} values"
    if s.min is not None:
        text += f", min {_g(s.min)}, median {_g(s.median)}, max {_g(s.max)}"
    if scales and s.histogram:
        text += " (" + ", ".join(f"1e{k}: {v}" for k, v in s.histogram.items()) + ")"
    if not scales:
        text += f", {s.nonzero} nonzero"
    return text


def _qparams_text(p: QParams | None) -> str:
    if p is None:
        return "-"
    parts = [p.dtype]
    if p.block_size:
        parts.append(f"block {p.block_size}")
    elif p.granularity:
        parts.append(p.granularity + (f" axis {p.axis}" if p.axis is not None else ""))
    if p.scale_min is not None:
        scale = _g(p.scale_min) if p.scale_min == p.scale_max else f"{_g(p.scale_min)}..{_g(p.scale_max)}"
        parts.append(f"scale {scale}")
    if p.zero_point_min is not None:
        zp = (
            p.zero_point_min
            if p.zero_point_min == p.zero_point_max
            else f"{p.zero_point_min}..{p.zero_point_max}"
        )
        parts.append(f"zp {zp}")
    return " ".join(parts)


def _sections(r: Inspection) -> list[Section]:
    f, q = r.file, r.quantization
    total = f.total_bytes
    external = ", ".join(
        f"{e.location} {e.bytes:,} B"
        if e.bytes is not None
        else f"{e.location} {'NOT READ' if e.problem else 'MISSING'}"
        for e in f.external
    )
    ort = "not checked (--no-ort)"
    if f.ort_checked:
        ort = "loads on the CPU provider" if f.ort_error is None else f"cannot load: {f.ort_error}"
    if f.not_run:
        ort = f"not loaded: {f.not_run}" if f.ort_checked else ort
    summary = [
        ["file", f"{f.bytes:,} B" + (f" + external data {external} = {total:,} B" if f.external else "")],
        ["onnx", f"IR {f.ir_version}, opsets {_counts(f.opsets)}, producer {f.producer or '-'}"],
        ["checker", "passes (full check)" if f.checker_error is None else f"fails: {f.checker_error}"]
        if not f.not_run
        else ["checker", f"not run: {f.not_run}"],
        ["onnxruntime", ort],
    ]
    summary += [["input", f"{v.name} {v.dtype} {_shape(v)}"] for v in r.inputs]
    summary += [["output", f"{v.name} {v.dtype} {_shape(v)}"] for v in r.outputs]
    ops = [[str(k), op if d == "" else f"{d}.{op}"] for (d, op), k in r.operators.items()]
    params = [
        [p.dtype, str(p.tensors), f"{p.elements:,}", f"{p.bytes:,}", f"{100 * p.share:.1f}%"]
        for p in r.parameters
    ]
    c = q.compute_counts()
    quant = [
        ["format", q.format],
        [
            "compute nodes",
            f"{c['quantized']} of {c['total']} quantized ({_counts(_schemes(r))}), {c['float']} float",
        ],
    ]
    ort_ops = _ort_ops(r)
    if ort_ops is not None:
        quant.append(["onnxruntime runs", _counts(ort_ops)])
    quant += [
        ["Q/DQ, integer ops", _counts(q.op_counts)],
        ["weights", _counts(q.weight_granularity)],
        ["activations", ", ".join(q.activation_dtypes) or "float"],
    ]
    quant += [[f"{role} scales", _stats_text(s, scales=True)] for role, s in q.scales.items()]
    quant += [[f"{role} zero points", _stats_text(s, scales=False)] for role, s in q.zero_points.items()]
    n_nodes = sum(r.operators.values())
    consts = (
        f", {r.constant_nodes[0]} Constant nodes {r.constant_nodes[1]:,} B" if r.constant_nodes[0] else ""
    )
    sections: list[Section] = [
        (f"quantcli inspect {f.path.name}", [], summary),
        (f"operators ({n_nodes} nodes)", ["count", "op"], ops),
        (
            f"parameters: {sum(p.tensors for p in r.parameters)} initializers, {r.parameter_bytes:,} B "
            f"({100 * r.parameter_bytes / total if total else 0:.1f}% of the file){consts}",
            ["dtype", "tensors", "elements", "bytes", "share"],
            params,
        ),
        ("quantization", [], quant),
    ]
    if r.show_nodes:
        rows = [
            [
                n.name,
                n.op_type,
                n.scheme,
                n.precision,
                _qparams_text(n.weight),
                _qparams_text(n.input),
                _qparams_text(n.output),
                n.ort_op or "-",
            ]
            for n in q.compute
        ]
        headers = ["node", "op", "scheme", "precision", "weight", "input", "output", "onnxruntime"]
        sections.append((f"compute nodes ({len(rows)})", headers, rows))
    if r.tensors is not None:
        rows = [
            [
                t.name,
                t.dtype,
                "[" + ", ".join(map(str, t.shape)) + "]",
                f"{t.bytes:,}",
                t.location or "-",
                t.role,
            ]
            for t in r.tensors
        ]
        sections.append(
            (f"initializers ({len(rows)})", ["name", "dtype", "shape", "bytes", "external", "role"], rows)
        )
    findings = [[x.severity, x.code, x.message] for x in r.findings]
    sections.append(
        (f"findings ({len(findings)})", ["severity", "code", "finding"], findings or [["-", "-", "none"]])
    )
    return sections


def render_inspect(r: Inspection, *, rich_output: bool) -> None:
    sections = _sections(r)
    if rich_output:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        console = Console()
        style = {"error": "bold red", "warning": "yellow", "info": "dim"}
        for title, headers, rows in sections:
            console.print(Text(title, style="bold"))
            table = Table(show_header=bool(headers))
            for i, h in enumerate(headers or ["", ""]):
                table.add_column(h, style="bold" if not headers and i == 0 else None, overflow="fold")
            for row in rows:
                row_style = style.get(row[0]) if title.startswith("findings") else None
                table.add_row(*(Text(cell) for cell in row), style=row_style)  # Text: no markup in names
            console.print(table)
        return
    blocks = []
    for title, headers, rows in sections:
        if not headers:
            width = max((len(k) for k, _ in rows), default=0)
            lines = [f"  {k:<{width}}  {v}" for k, v in rows]
        else:
            table = [headers, *rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(headers) - 1)]
            lines = [
                "  "
                + "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False))
                + "  "
                + row[-1]
                for row in table
            ]
            lines = [line.rstrip() for line in lines]
        blocks.append("\n".join([title, *lines]))
    out("\n\n".join(blocks))
