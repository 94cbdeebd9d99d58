"""Rendering of a ConvertResult: rich table, plain text, or the `convert --json` object."""

from __future__ import annotations

from collections import Counter
from typing import Any

from quantcli import __version__
from quantcli.api import ConvertResult
from quantcli.cpu import TARGETS
from quantcli.errors import notice_code
from quantcli.kernel_check import KernelCheck
from quantcli.quantize import modes
from quantcli.quantize.fallback import SearchResult
from quantcli.quantize.speed import SpeedPlan
from quantcli.report import SCHEMA_VERSION, number, out
from quantcli.report.checks import (
    check_dicts,
    check_lines,
    check_md_table,
    checks_to_junit,
    md,
    md_table,
    print_checks,
    verdict,
)
from quantcli.text import count
from quantcli.verify import Agreement


def _already_half(r: ConvertResult) -> str:
    """ ", N in float16 as in the input model" for the compute nodes the conversion left in the
    half precision they already had."""
    count = r.half_as_input()
    if not count:
        return ""
    types = sorted(
        {r.input_half[n.name] for n in r.nodes if n.name in r.input_half and n.precision == "float"}
    )
    return f", {count} in {'/'.join(types)} as in the input model"


def convert_to_dict(r: ConvertResult) -> dict[str, Any]:
    """The documented `convert --json` object (schema_version 1)."""
    a = r.agreement
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "convert",
        "exit_code": r.exit_code,
        "quantcli_version": __version__,
        "model": str(r.model),
        "output": str(r.output),
        "written": r.written,
        "mode": r.mode,
        "activation_type": r.activation_type,
        "bias_corrected": r.bias_corrected,
        "plan_replayed": r.plan_replayed,
        "size": {"input_bytes": r.input_bytes, "output_bytes": r.output_bytes, "ratio": r.size_ratio},
        "weight_bytes": None if r.weight_bytes is None else {**r.weight_bytes, "ratio": r.weight_ratio},
        "compute_nodes": r.compute_counts(),
        "stored_weight_nodes": r.stored_weight_nodes(),
        "input_half_nodes": r.half_as_input(),
        "nodes_by_precision": dict(sorted(Counter(n.precision for n in r.nodes).items())),
        "float_reasons": [
            {"op_type": op, "reason": reason, "count": len(names), "nodes": names}
            for op, reason, names in r.float_reasons()
        ],
        "nodes": [
            {"name": n.name, "op_type": n.op_type, "precision": n.precision, "reason": n.reason}
            for n in r.nodes
        ],
        "calibration_samples": r.calibration_samples,
        "calib_method": r.calib_method if r.calibration_samples else None,
        "preprocess": {"applied": r.preprocess_applied, "notes": r.preprocess_notes},
        "accuracy": None
        if a is None
        else {
            "samples": a.samples,
            "eval_source": r.eval_source,
            "reference_accuracy": a.reference_accuracy,
            "candidate_accuracy": a.candidate_accuracy,
            "outputs": _outputs_dict(a),
        },
        "latency": None
        if r.latency is None
        else {
            "threads": r.latency.threads,
            "rounds": r.latency.rounds,
            "reference_ms": r.latency.reference_ms,
            "candidate_ms": r.latency.candidate_ms,
            "ratio": r.latency.ratio,
            "op_times": None
            if r.latency_ops is None
            else {
                which: [{"op_type": t.op_type, "nodes": t.nodes, "ms": round(t.ms, 4)} for t in ops]
                for which, ops in r.latency_ops.items()
            },
        },
        "io_quantization": {
            name: {"scale": q.scale, "zero_point": q.zero_point, "dtype": q.dtype}
            for name, q in r.io_quantization.items()
        },
        "target_cpu": None if r.saturation is None else r.saturation.target_cpu,
        "saturation": None
        if r.saturation is None
        else {
            "u8s8_layers": r.saturation.layers,
            "exact_u8u8_layers": r.saturation.exact_layers,
            "layers_over_limit": r.saturation.layers_over,
            "pairs_over_limit": r.saturation.pairs_over,
        },
        "kernels": None if r.kernels is None else _kernels_dict(r.kernels),
        "checks": check_dicts(r.checks),
        "search": _search_dict(r.search),
        "latency_skipped": r.latency_skipped,
        "speed_plan": _speed_dict(r.speed),
        "warnings": r.warnings,
        "warning_codes": [notice_code(w) for w in r.warnings],
        "seconds": {k: round(v, 4) for k, v in r.seconds.items()},
        # exit 3 from --fallback is a failure like any other: its error object too (docs/json.md)
        **(
            {"error": {"code": "cannot-do", "message": r.problem, "exit_code": r.exit_code}}
            if r.problem
            else {}
        ),
    }


def _search_dict(s: SearchResult | None) -> dict[str, Any] | None:
    """--fallback: the goal, the ranking, every plan measured, the nodes moved and the flag that
    keeps them in float without searching."""
    if s is None:
        return None
    return {
        "fallback": s.precision,
        "goal": s.goal,
        "met": s.met,
        "moved": s.moved,
        "exclude_flag": s.exclude_flag or None,
        "candidates": len(s.candidates),
        "max_fallback": s.limit,
        "ranking": [
            {
                "node": c.name,
                "op_type": c.op_type,
                "gain_db": number(c.gain_db),
                "layer_loss_db": number(c.loss_db),
            }
            for c in s.candidates
        ],
        "steps": [
            {
                "moved": st.moved,
                "met": st.met,
                "worst_sqnr_db": number(st.worst_sqnr_db),
                "checks": check_dicts(st.checks),
            }
            for st in s.steps
        ],
        "seconds": round(s.seconds, 4),
    }


def _op_times(ops: list) -> str:
    return ", ".join(f"{t.op_type} x{t.nodes} {t.ms:.3g} ms" for t in ops)


def _speed_dict(s: SpeedPlan | None) -> dict[str, Any] | None:
    """static/mixed: what the cost tables kept in float for speed (quantize/speed.py)."""
    if s is None:
        return None
    return {
        "tables": s.tables,
        "no_table_for": s.unplanned,
        "skipped": s.skipped,
        "candidates": s.candidates,
        "kept_float": sorted(s.keep_float),
        "estimate_us": {k: {"all_int8": a, "planned": b} for k, (a, b) in s.estimate_us.items()},
    }


def _speed_rows(r: ConvertResult) -> list[tuple[str, str]]:
    s = r.speed
    if s is None:
        return []
    if s.skipped:
        return [("speed plan", f"not applied: {s.skipped}")]
    if not s.tables:
        return [
            (
                "speed plan",
                f"no cost table for {', '.join(s.unplanned)}: every node quantized as accuracy allows",
            )
        ]
    estimates = "; ".join(
        f"{kind} estimate {b / 1e3:.3g} ms vs {a / 1e3:.3g} ms all INT8"
        for kind, (a, b) in s.estimate_us.items()
    )
    nodes = count(s.candidates, "Conv/MatMul/Gemm node")
    if s.keep_float:
        head = f"{len(s.keep_float)} of {nodes} kept in float: slower in integer ({estimates})"
    else:
        head = (
            f"all {nodes} stay INT8: no float choice is faster ({estimates})"
            if s.candidates
            else "no Conv/MatMul/Gemm node to price"
        )
    rows = [("speed plan", f"{head}; cost table {', '.join(s.tables)}")]
    if s.unplanned:
        rows.append(("  no table for", ", ".join(s.unplanned)))
    if s.keep_float:
        rows.append(("  in float", _names(sorted(s.keep_float), 6)))
    return rows


def _search_rows(r: ConvertResult) -> list[tuple[str, str]]:
    s = r.search
    if s is None:
        return []
    where = "float32" if s.precision == "float" else "FP16"
    plans = f"{count(len(s.steps), 'plan')} measured in {s.seconds:.1f} s"
    if s.met and not s.moved:
        head = f"the plan meets {', '.join(s.goal)} without moving a node ({plans})"
    elif s.met:
        head = f"{count(len(s.moved), 'node')} of {len(s.candidates)} candidates in {where} meet {', '.join(s.goal)} ({plans})"
    else:
        head = f"not met: {', '.join(s.goal)} with at most {s.limit} of {len(s.candidates)} candidates in {where} ({plans})"
    rows = [("fallback", head)]
    if s.moved:
        rows.append(("  moved", _names(s.moved, 6)))
        rows.append(("  as a flag", s.exclude_flag))
    return rows


def _outputs_dict(a: Agreement) -> list[dict[str, Any]]:
    return [
        {
            "name": o.name,
            "cosine_mean": number(o.cosine_mean),
            "cosine_min": number(o.cosine_min),
            "max_abs_error": number(o.max_abs_error),
            "mean_abs_error": number(o.mean_abs_error),
            "sqnr_db": number(o.sqnr_db),
            "top1_agreement": o.top1_agreement,
        }
        for o in a.outputs
    ]


def _kernels_dict(k: KernelCheck) -> dict[str, Any]:
    """Which kernels `accuracy` came from; `exact_accuracy`: the same evaluation on exact integer
    kernels, when this CPU's can differ from them on this model (else null, and `reason` says why)."""
    return {
        "host": k.host,
        "onnxruntime_version": k.onnxruntime_version,
        "same_as_exact": k.same_as_exact,
        "reason": k.reason,
        "exact_accuracy": None
        if k.exact is None
        else {"candidate_accuracy": k.exact.candidate_accuracy, "outputs": _outputs_dict(k.exact)},
    }


def _precision_label(r: ConvertResult) -> str:
    if r.activation_type == "int16":
        return "with INT16 activations and INT8 weights (float compute in onnxruntime)"
    return modes.get(r.mode).label


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _convert_rows(r: ConvertResult) -> list[tuple[str, str]]:
    c = r.compute_counts()
    rows = [
        ("output", str(r.output) + ("" if r.written else " (not written: the thresholds were not met)")),
        ("mode", r.mode + (" (plan replayed)" if r.plan_replayed else "")),
        ("size", f"{r.input_bytes:,} B -> {r.output_bytes:,} B (ratio {r.size_ratio:.3f})"),
    ]
    if r.weight_bytes is not None:
        w = r.weight_bytes
        rows.append(
            ("MatMul/Gemm weights", f"{w['before']:,} B -> {w['after']:,} B (ratio {r.weight_ratio:.3f})")
        )
    rows += [
        (
            "compute nodes",
            f"{c['quantized']} of {c['total']} {_precision_label(r)}, "
            f"{c['float'] - r.half_as_input()} in float32" + _already_half(r),
        ),
    ]
    rows += modes.get(r.mode).report_rows(r)
    rows.extend(
        (f"integer I/O {name}", f"{q.dtype}, scale {q.scale:.9g}, zero point {q.zero_point}")
        for name, q in r.io_quantization.items()
    )
    if r.calibration_samples:
        rows.append(("calibration", f"{count(r.calibration_samples, 'sample')}, {r.calib_method}"))
    if r.bias_corrected:
        rows.append(
            (
                "bias correction",
                f"{r.bias_corrected} INT32 biases offset the mean shift of their INT8 weights",
            )
        )
    a = r.agreement
    if a is None:
        rows.append(("accuracy", "not measured (no evaluation samples: pass --eval DIR)"))
    else:
        rows.append(("evaluated on", f"{count(a.samples, 'sample')} ({r.eval_source})"))
        for o in a.outputs:
            text = f"cosine {o.cosine_mean:.5f} (min {o.cosine_min:.5f}), max abs error {o.max_abs_error:.4g}"
            if o.top1_agreement is not None:
                text += f", top-1 agreement {_pct(o.top1_agreement)}"
            rows.append((f"output {o.name}", text))
        if a.reference_accuracy is not None:
            rows.append(
                (
                    "accuracy vs labels",
                    f"float {_pct(a.reference_accuracy)} -> quantized {_pct(a.candidate_accuracy)}",
                )
            )
        rows += _kernel_rows(r)
    if r.latency is not None:
        lat = r.latency
        rows.append(
            (
                "latency",
                f"{lat.candidate_ms:.4g} ms vs FP32 {lat.reference_ms:.4g} ms: ratio {lat.ratio:.3f} "
                f"(median of {lat.rounds} interleaved runs, {lat.threads} thread{'s' if lat.threads > 1 else ''})",
            )
        )
        if r.latency_ops is not None:
            rows.append(
                ("  slower", f"{lat.ratio - 1:.0%} slower than FP32 on this CPU; where the time goes:")
            )
            rows.append(("    converted", _op_times(r.latency_ops["candidate"])))
            rows.append(("    FP32", _op_times(r.latency_ops["reference"])))
    elif r.latency_skipped is not None:
        rows.append(("latency", f"not measured: {r.latency_skipped}"))
    rows += _speed_rows(r)
    rows += _search_rows(r)
    rows.append(("time", f"{r.seconds.get('total', 0.0):.2f} s"))
    rows.extend(("warning", w) for w in r.warnings)
    return rows


def _kernel_rows(r: ConvertResult) -> list[tuple[str, str]]:
    """Which kernels the figures above came from; the exact-kernel figures when they differ."""
    k, sat = r.kernels, r.saturation
    if k is None or sat is None or not (sat.layers or sat.exact_layers):
        return []
    rows = [("target CPU", f"{sat.target_cpu}: {TARGETS[sat.target_cpu]}")]
    if sat.exact_layers:
        rows.append(
            (
                "exact layers",
                f"{sat.exact_layers} first/last layers keep full-range weights on the U8U8 kernel",
            )
        )
    rows.append(("measured on", f"this CPU's kernels ({k.host['kind']}): {k.reason}"))
    if k.exact is not None:
        for o in k.exact.outputs:
            text = f"cosine {o.cosine_mean:.5f} (min {o.cosine_min:.5f}), SQNR {o.sqnr_db:.1f} dB"
            if o.top1_agreement is not None:
                text += f", top-1 agreement {_pct(o.top1_agreement)}"
            rows.append((f"exact kernels {o.name}", text + " (what VNNI and ARM CPUs compute)"))
    return rows


def render_convert(r: ConvertResult, *, rich_output: bool) -> None:
    rows = _convert_rows(r)
    reasons = r.float_reasons()
    if rich_output:
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title=f"quantcli convert {r.model.name}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
        if r.checks:
            print_checks(console, r.checks)
        if reasons:
            kept = Table(title="kept in float", show_header=True)
            kept.add_column("op")
            kept.add_column("nodes", justify="right")
            kept.add_column("why")
            for op, reason, names in reasons:
                kept.add_row(op, _names(names), reason)
            console.print(kept)
        return
    width = max(len(k) for k, _ in rows)
    out("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if reasons:
        out("kept in float:")
        out("\n".join(f"  {op} x{len(names)} ({_names(names)}): {reason}" for op, reason, names in reasons))
    if r.checks:
        out("\n".join(check_lines(r.checks)))


def convert_to_markdown(r: ConvertResult) -> str:
    """A summary for a CI job page (GitHub's step summary): verdict, figures, checks."""
    title = f"### quantcli convert: `{md(r.model.name)}` -> `{md(r.output.name)}`: {verdict(r.checks)}"
    lines = [title, "", *md_table(("", "value"), _convert_rows(r))]
    if r.checks:
        lines += ["", *check_md_table(r.checks)]
    if r.warnings:
        lines += ["", *(f"- warning: {md(w)}" for w in r.warnings)]
    return "\n".join(lines) + "\n"


def convert_to_junit(r: ConvertResult) -> str:
    """JUnit XML: one test case per threshold, a failure element for each one missed."""
    suite = f"quantcli convert {r.model.name} {r.output.name}"
    return checks_to_junit(r.checks, command="convert", suite=suite, seconds=r.seconds.get("total", 0.0))


def _names(names: list[str], shown: int = 3) -> str:
    """The first few node names of a group, and how many more."""
    more = f", +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
