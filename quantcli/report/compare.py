"""Rendering of a CompareResult: rich tables, plain text, a markdown summary for CI job pages,
JUnit XML; computes nothing. The `--json` object and its schema are in report/compare_json.py."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from quantcli.compare import CompareResult
from quantcli.errors import UsageError
from quantcli.model_io import write_bytes_atomic
from quantcli.per_layer import LayerError
from quantcli.report import out
from quantcli.report.checks import (
    check_lines,
    check_md_table,
    checks_to_junit,
    md,
    md_table,
    print_checks,
    verdict,
)
from quantcli.report.compare_json import COMPARE_JSON_SCHEMA, compare_to_dict

__all__ = [
    "COMPARE_JSON_SCHEMA",
    "compare_to_dict",
    "compare_to_junit",
    "compare_to_markdown",
    "render_compare",
]

TEXT_LAYERS = 20  # per-layer rows shown on a terminal or in plain text (JSON lists all)
MARKDOWN_LAYERS = 10

# -- text -------------------------------------------------------------------------------------


def _db(x: float) -> str:
    if math.isnan(x):
        return "nan"
    return ("inf" if x > 0 else "-inf") if math.isinf(x) else f"{x:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _bytes(n: int) -> str:
    return f"{n:,} B"


def _params(p: dict[str, int]) -> str:
    return ", ".join(f"{k} {_bytes(v)}" for k, v in p.items()) or "none"


def _summary_rows(r: CompareResult) -> list[tuple[str, str]]:
    rows = [
        (
            "reference",
            f"{r.reference.path}: {_bytes(r.reference.file_bytes)} (parameters: {_params(r.reference.parameter_bytes)})",
        ),
        (
            "candidate",
            f"{r.candidate.path}: {_bytes(r.candidate.file_bytes)} (parameters: {_params(r.candidate.parameter_bytes)})",
        ),
        ("size ratio", f"{r.size_ratio:.3f} (candidate / reference)"),
        ("data", r.data.describe()),
    ]
    for p in (*r.io.inputs, *r.io.outputs):
        if p.converted:
            rows.append(
                (f"{'input' if p in r.io.inputs else 'output'} {p.name}",
                 f"reference {p.reference.describe()}, candidate {p.candidate.describe()}: compared in float32")
            )  # fmt: skip
    a = r.agreement
    if a.reference_accuracy is not None:
        rows.append(
            ("accuracy", f"reference {_pct(a.reference_accuracy)}, candidate {_pct(a.candidate_accuracy)} "
             f"(drop {100 * a.accuracy_drop:.2f} points, {a.samples} labelled samples)")
        )  # fmt: skip
    k = r.kernels
    if k is not None:
        text = f"this CPU's ({k.host['kind']}, onnxruntime {k.onnxruntime_version}): {k.reason}"
        if k.exact is not None:
            o = k.exact.outputs[0]
            text += f"; on exact integer kernels (VNNI/ARM) output {o.name} has SQNR {_db(o.sqnr_db)} dB"
        rows.append(("kernels", text))
    if r.latency is not None:
        lat = r.latency
        rows.append(
            ("latency", f"reference {lat.reference_ms:.4g} ms, candidate {lat.candidate_ms:.4g} ms: ratio {lat.ratio:.3f} "
             f"(median of {lat.rounds} interleaved runs each after {lat.warmup} warm-up runs, "
             f"{lat.threads} thread{'s' if lat.threads > 1 else ''}, onnxruntime CPU)")
        )  # fmt: skip
    return rows


_OUTPUT_HEAD = (
    "output",
    "cosine mean",
    "cosine min",
    "max abs err",
    "mean abs err",
    "rel err",
    "SQNR dB",
    "top-1",
    "top-5",
)
_LAYER_HEAD = ("rank", "layer", "op", "SQNR dB", "inputs dB", "added dB", "cosine", "max abs err")
_OUTPUT_NAMES = frozenset({0})
_LAYER_NAMES = frozenset({1, 2})


def _output_rows(r: CompareResult) -> list[tuple[str, ...]]:
    return [
        (
            o.name,
            f"{o.cosine_mean:.6f}",
            f"{o.cosine_min:.6f}",
            f"{o.max_abs_error:.4g}",
            f"{o.mean_abs_error:.4g}",
            f"{o.relative_error:.4g}",
            _db(o.sqnr_db),
            _pct(o.top1_agreement),
            _pct(o.top5_overlap),
        )
        for o in r.agreement.outputs
    ]


def _layer_rows(layers: list[LayerError]) -> list[tuple[str, ...]]:
    return [
        (
            str(k),
            e.node,
            e.op_type
            if e.candidate_op_type in (e.op_type, "")
            else f"{e.op_type} (candidate: {e.candidate_op_type})",
            _db(e.metrics.sqnr_db),
            _db(e.input_sqnr_db),
            _db(e.added_db),
            f"{e.metrics.cosine_mean:.6f}",
            f"{e.metrics.max_abs_error:.4g}",
        )
        for k, e in enumerate(layers, start=1)
    ]


def _per_layer_heading(r: CompareResult, shown: int) -> str:
    p = r.per_layer
    return (
        f"per-layer error, worst first: {len(p.layers)} tensors compared on {p.samples} samples, "
        f"{len(p.unmatched)} without a counterpart ({min(shown, len(p.layers))} shown)"
    )


def _per_layer_legend(r: CompareResult) -> str:
    return (
        "added dB: worst SQNR among the layer's inputs minus its own SQNR "
        f"(both capped at {r.per_layer.clean_sqnr_db:g} dB)"
    )


def _unmatched_lines(r: CompareResult, shown: int = 5) -> list[str]:
    """One line per reason a reference layer was not compared, naming a few of its tensors."""
    by_reason: dict[str, list[str]] = {}
    for tensor, _, _, why in r.per_layer.unmatched:
        by_reason.setdefault(why, []).append(tensor)
    lines = []
    for why, tensors in by_reason.items():
        more = f" and {len(tensors) - shown} more" if len(tensors) > shown else ""
        lines.append(f"not compared ({why}): {', '.join(tensors[:shown])}{more}")
    return lines


def _table_text(head: tuple[str, ...], rows: list[tuple[str, ...]], left: frozenset[int]) -> list[str]:
    """Columns padded to width: the `left` columns (names) left-aligned, the others (numbers) right."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(head), *(line(row) for row in rows)]


def render_compare(r: CompareResult, *, rich_output: bool) -> None:
    """The report on stdout: rich tables on a terminal, plain text otherwise."""
    if rich_output:
        _render_rich(r)
        return
    rows = _summary_rows(r)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += ["", *_table_text(_OUTPUT_HEAD, _output_rows(r), _OUTPUT_NAMES)]
    if r.per_layer is not None:
        lines += ["", _per_layer_heading(r, TEXT_LAYERS)]
        lines += _table_text(_LAYER_HEAD, _layer_rows(r.per_layer.layers)[:TEXT_LAYERS], _LAYER_NAMES)
        lines += [_per_layer_legend(r), *_unmatched_lines(r), f"note: {r.per_layer.note}"]
    lines += ["", *check_lines(r.checks)]
    out("\n".join(lines))


def _render_rich(r: CompareResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(
        title=f"quantcli compare {r.reference.path.name} {r.candidate.path.name}", show_header=False
    )
    summary.add_column(style="bold")
    summary.add_column()
    for k, v in _summary_rows(r):
        summary.add_row(k, v)
    console.print(summary)
    outputs = Table(title="outputs")
    for k, h in enumerate(_OUTPUT_HEAD):
        outputs.add_column(h, justify="left" if k in _OUTPUT_NAMES else "right")
    for row in _output_rows(r):
        outputs.add_row(*row)
    console.print(outputs)
    if r.per_layer is not None:
        layers = Table(
            title=_per_layer_heading(r, TEXT_LAYERS),
            caption="\n".join([_per_layer_legend(r), *_unmatched_lines(r), r.per_layer.note]),
        )
        for k, h in enumerate(_LAYER_HEAD):
            layers.add_column(h, justify="left" if k in _LAYER_NAMES else "right")
        shown = r.per_layer.layers[:TEXT_LAYERS]
        worst = shown[0].added_db if shown else 0.0
        for e, row in zip(shown, _layer_rows(shown), strict=True):
            style = None
            if e is shown[0]:
                style = "bold red"
            elif worst > 0 and e.added_db >= worst / 2:
                style = "yellow"
            layers.add_row(*row, style=style)
        console.print(layers)
    print_checks(console, r.checks)


# -- markdown and JUnit -----------------------------------------------------------------------


def compare_to_markdown(r: CompareResult) -> str:
    """A summary for a CI job page (GitHub's step summary): verdict, figures, checks, worst layers."""
    lines = [
        f"### quantcli compare: `{md(r.candidate.path.name)}` vs `{md(r.reference.path.name)}`: {verdict(r.checks)}",
        "",
    ]
    lines += md_table(("", "value"), [(k, v) for k, v in _summary_rows(r)])
    lines += ["", *md_table(_OUTPUT_HEAD, _output_rows(r))]
    if r.checks:
        lines += ["", *check_md_table(r.checks)]
    if r.per_layer is not None:
        lines += ["", f"<details><summary>{md(_per_layer_heading(r, MARKDOWN_LAYERS))}</summary>", ""]
        lines += md_table(_LAYER_HEAD, _layer_rows(r.per_layer.layers)[:MARKDOWN_LAYERS])
        lines += ["", f"{_per_layer_legend(r)}; {r.per_layer.note}.", "", "</details>"]
    if r.warnings:
        lines += ["", *(f"> warning: {md(w)}" for w in r.warnings)]
    return "\n".join(lines) + "\n"


def compare_to_junit(r: CompareResult) -> str:
    """JUnit XML: one test case per check, a failure element for each check not met."""
    suite = f"quantcli compare {r.reference.path.name} {r.candidate.path.name}"
    return checks_to_junit(r.checks, command="compare", suite=suite, seconds=r.seconds.get("total", 0.0))


def write_report_file(path: Path, text: str, *, append: bool = False) -> None:
    """Write a rendered report atomically, or append it (a CI step summary file); UsageError on failure."""
    try:
        if append:  # O_NONBLOCK: a FIFO put there since the check is refused, not waited on
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666)
            with open(fd, "a", encoding="utf-8") as fh:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UsageError(f"{path}: not a regular file; a report is written only to one")
                fh.write(text)
        else:
            write_bytes_atomic(Path(path), text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from exc
