"""The benchmark's rows and how they print: one plain-text (or Markdown) table per case, then notes."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from _bench_cases import REPO, Case
from _bench_convert import (
    ORT_DYNAMIC,
    ORT_INT4,
    ORT_STATIC,
    QUANTCLI_DYNAMIC,
    QUANTCLI_INT4,
    QUANTCLI_STATIC,
    Conversion,
    Tool,
)
from _bench_kernels import Kernels
from _bench_measure import WARMUP_RUNS, Accuracy

# quantcli's tool and onnxruntime's that does the same, for "Where quantcli is slower"
PAIRS = ((QUANTCLI_STATIC, ORT_STATIC), (QUANTCLI_DYNAMIC, ORT_DYNAMIC), (QUANTCLI_INT4, ORT_INT4))


@dataclass
class Row:
    case: Case
    tool: Tool
    conversion: Conversion | None = None  # None for fp32
    size_ratio: float | None = None
    weight_ratio: float | None = None  # MatMul/Gemm weight bytes / FP32's (--preset modes only)
    accuracy: Accuracy | None = None
    int_mac_share: float | None = None
    latency: dict[int, float] = field(default_factory=dict)  # batch -> median / FP32 median
    kernels: Kernels | None = None
    error: str | None = None


@dataclass
class CaseResult:
    case: Case
    rows: list[Row]
    total_macs: int
    fp32_seconds: dict[int, float]  # batch -> FP32 median seconds
    control: dict[int, float]  # batch -> a second FP32 session's median / FP32 median
    notes: list[str]
    weight_bytes: int | None = None  # FP32's MatMul/Gemm weight bytes, when measured


# --------------------------------------------------------------------------- cells


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"


def columns(result: CaseResult) -> list[str]:
    case = result.case
    has_labels = any(r.accuracy is not None and r.accuracy.labels is not None for r in result.rows)
    weights = ["MatMul W"] if any(r.weight_ratio is not None for r in result.rows) else []
    cols = (
        ["tool", "size", *weights]
        + (["acc"] if has_labels else [])
        + (["top-1 agree"] if case.classifier else [])
    )
    cols += ["cosine", "int MACs"] + [f"lat b{b}" for b in case.batches] + ["convert s", "peak RSS MB"]
    return cols + (["error"] if any(r.error for r in result.rows) else [])


def tool_label(row: Row) -> str:
    """The row's tool, with the calibration method for the calibrated rows (quantcli's from its report)."""
    if row.tool == ORT_STATIC:
        return f"{row.tool.label} (minmax)"
    method = row.conversion.report.get("calib_method") if row.conversion else None
    return f"{row.tool.label} ({method})" if row.tool.needs_calib and method else row.tool.label


def cell(row: Row, column: str) -> str:
    acc, conv = row.accuracy, row.conversion
    values = {
        "tool": tool_label(row),
        "size": _opt(row.size_ratio, ".3f"),
        "MatMul W": _opt(row.weight_ratio, ".3f"),
        "acc": _pct(acc.labels if acc else None),
        "top-1 agree": _pct(acc.top1_agree if acc else None),
        "cosine": _opt(acc.cosine if acc else None, ".5f"),
        "int MACs": _pct(row.int_mac_share, 1),
        "convert s": _opt(conv.wall_s if conv else None, ".1f"),
        "peak RSS MB": _opt(conv.peak_rss_mb if conv else None, ".0f"),
        "error": f"FAILED: {row.error}" if row.error else "",
    }
    if column.startswith("lat b"):
        return _opt(row.latency.get(int(column[5:])), ".3f")  # the gaps between tools are 1-5%
    return values[column]


def plain_table(head: Sequence[str], rows: list[list[str]], left: Container[int] = (0,)) -> str:
    """Aligned columns under a rule, the columns numbered in `left` left-aligned, the others right."""
    cells = [list(head), *rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(head))]

    def fmt(line: list[str]) -> str:
        parts = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(c) for c in cells[1:]])


def md_table(head: Sequence[str], rows: list[list[str]], left: Container[int] = (0,)) -> str:
    aligns = ["---" if i in left else "---:" for i in range(len(head))]
    return "\n".join("| " + " | ".join(line) + " |" for line in [list(head), aligns, *rows])


def _error_left(cols: list[str]) -> set[int]:
    return {0, len(cols) - 1} if cols[-1] == "error" else {0}


def text_table(result: CaseResult) -> str:
    cols = columns(result)
    return plain_table(cols, [[cell(r, c) for c in cols] for r in result.rows], _error_left(cols))


def markdown_table(result: CaseResult) -> str:
    cols = columns(result)
    return md_table(cols, [[cell(r, c) for c in cols] for r in result.rows], _error_left(cols))


def case_title(result: CaseResult) -> str:
    fp32 = ", ".join(f"{s * 1e3:.3f} ms at batch {b}" for b, s in result.fp32_seconds.items())
    control = ", ".join(f"{r:.3f}" for r in result.control.values())
    weights = ""
    if result.weight_bytes is not None:
        share = result.weight_bytes / result.case.model.stat().st_size
        weights = (
            f"; FP32 MatMul/Gemm weights {result.weight_bytes / 2**20:.2f} MiB ({share:.1%} of the file)"
        )
    return (
        f"{result.case.name}: {result.total_macs / 1e6:.1f} M MACs at batch 1{weights}; FP32 median latency "
        f"{fp32}; a second FP32 session timed alongside: lat {control} (the noise floor)"
    )


# --------------------------------------------------------------------------- float notes


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in counter.most_common()) or "none"


def _float_summary(row: Row) -> str:
    k = row.kernels
    if k is None:
        return "not analysed"
    return (
        f"{_pct(row.int_mac_share, 1)} of MACs in integer kernels ({_counts(k.int_ops)}); float compute "
        f"{_counts(k.float_compute_ops)}; other float ops {_counts(k.float_other_ops)}; Q/DQ {_counts(k.conversions)}"
    )


def _ratios(latency: dict[int, float]) -> str:
    return ", ".join(f"{r:.3f} at batch {b}" for b, r in latency.items())


def float_note(row: Row) -> str | None:
    """For a quantcli static/dynamic row not faster than FP32: what onnxruntime ran in float, and why."""
    if row.tool not in (QUANTCLI_STATIC, QUANTCLI_DYNAMIC) or row.kernels is None:
        return None
    slow = {b: r for b, r in row.latency.items() if r >= 1.0}
    if not slow:
        return None
    text = f"{row.case.name} / {tool_label(row)} (latency ratio {_ratios(slow)}): {_float_summary(row)}"
    reasons = row.conversion.report.get("float_reasons") if row.conversion else None
    if isinstance(reasons, list) and reasons:
        top = "; ".join(f"{r['op_type']} x{r['count']}: {r['reason']}" for r in reasons[:5])
        text += f". quantcli's reasons for its float nodes (most frequent first): {top}"
    return text


def float_notes(results: list[CaseResult]) -> list[str]:
    return [n for res in results for r in res.rows if (n := float_note(r)) is not None]


SLOWER_MARGIN = 1.05  # ratios within 5% of each other are within the noise


def pairs_run(results: list[CaseResult]) -> list[tuple[Tool, Tool]]:
    """The PAIRS of which this run timed both rows (of at least one case)."""
    timed = {r.tool for res in results for r in res.rows if r.latency}
    return [(ours, theirs) for ours, theirs in PAIRS if ours in timed and theirs in timed]


def slower_notes(results: list[CaseResult]) -> list[str]:
    """Where quantcli is slower than onnxruntime's matching tool: what each ran in float."""
    notes = []
    for res in results:
        by_tool = {r.tool: r for r in res.rows}
        for ours, theirs in pairs_run(results):
            a, b = by_tool.get(ours), by_tool.get(theirs)
            if a is None or b is None:
                continue
            slow = {n: r for n, r in a.latency.items() if n in b.latency and r > b.latency[n] * SLOWER_MARGIN}
            if slow:
                theirs_ratios = _ratios({n: b.latency[n] for n in slow})
                notes.append(
                    f"{res.case.name}: {tool_label(a)} {_ratios(slow)} vs {tool_label(b)} {theirs_ratios}. "
                    f"quantcli: {_float_summary(a)}. onnxruntime: {_float_summary(b)}"
                )
    return notes


# --------------------------------------------------------------------------- header and output


def cpu_name() -> str:
    """/proc/cpuinfo's model name with family/model/stepping and the ISA flags that decide INT8 speed."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return (
        f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, model "
        f"{fields.get('model', '?')}, stepping {fields.get('stepping', '?')}; {' '.join(isa)}; "
        f"{os.cpu_count()} logical cores)"
    )


def cpu_flags() -> list[str]:
    """Every flag /proc/cpuinfo lists for the first CPU ([] where there is no /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return value.split()
    except OSError:
        pass
    return []


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def dynamic_defaults() -> str:
    """quantize_dynamic's defaults as the installed onnxruntime's signature states them."""
    import inspect

    from onnxruntime.quantization import quantize_dynamic

    params = inspect.signature(quantize_dynamic).parameters
    shown = ("weight_type", "per_channel", "reduce_range", "op_types_to_quantize")
    return ", ".join(f"{p}={params[p].default}" for p in shown if p in params)


def quantcli_revision() -> str:
    """The repository's commit, and whether quantcli/ differs from it (other engineers edit it live);
    a warning when the quantcli this process imports is not this checkout's."""
    import subprocess

    import quantcli

    imported = Path(quantcli.__file__).resolve().parent
    elsewhere = (
        "" if imported == REPO / "quantcli" else f"; WARNING: quantcli imported from {imported}, not {REPO}"
    )

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout" + elsewhere
    dirty = git("status", "--porcelain", "--", "quantcli")
    return (
        f"git {commit}"
        + (", with uncommitted changes in quantcli/" if dirty else ", quantcli/ as committed")
        + elsewhere
    )


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How the script was run (argv: its arguments, default sys.argv's), as a shell command."""
    return shlex.join(["python", os.path.relpath(script), *(sys.argv[1:] if argv is None else argv)])


def run_header(command: str, load: str | None = None) -> list[str]:
    """The lines every benchmark's output starts with: the CPU, the versions (quantcli's with its
    revision), the command and the load average (default: now)."""
    import onnx
    import onnxruntime

    import quantcli

    return [
        f"CPU: {cpu_name()}",
        f"versions: onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, quantcli {quantcli.__version__} ({quantcli_revision()}), "
        f"onnxconverter-common {_version('onnxconverter-common')}, numpy {_version('numpy')}, "
        f"Python {platform.python_version()}",
        f"command: {command}",
        f"load average (1 min) {load or f'{os.getloadavg()[0]:.2f}'}",
    ]


def write_json(path: Path | str | None, header: list[str], figures: dict[str, object]) -> None:
    """When a --json FILE is given: the CPU, its full flag list, the header lines and the script's figures."""
    if path is not None:
        document = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "header": header, **figures}
        Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def header_lines(command: str, settings: str, load: str, tools: list[Tool]) -> list[str]:
    return [
        *run_header(command, load),
        f"latency: onnxruntime CPU provider, 1 intra-op thread, all graph optimizations; {WARMUP_RUNS} warm-up "
        f"runs per model, then {settings}; every model of a case in one process, one run each per round, "
        "in a random order every round (seeded); medians",
    ] + (
        [
            f"onnxruntime quantize_dynamic is run with its defaults: {dynamic_defaults()} "
            "(the docstring: op_types_to_quantize=None quantizes all supported operators, Conv included)"
        ]
        if ORT_DYNAMIC in tools
        else []
    )


LEGEND = [
    "size = output file bytes / FP32 file bytes",
    "MatMul W = bytes of the MatMul/Gemm weights in the output file / FP32's: the initializers that feed a "
    "MatMul/Gemm weight input directly or through DequantizeLinear (data, scale, zero point), Cast, Transpose, "
    "Reshape; MatMulNBits' packed B, scales and zero_points (biases excluded)",
    "acc = accuracy vs eval/labels.npy; top-1 agree = share of samples whose top-1 class equals FP32's; "
    "cosine = mean cosine similarity of the scored output vs FP32 (logits; MiniLM's embedding)",
    "int MACs = share of the FP32 model's multiply-accumulates (Conv/ConvTranspose/MatMul/Gemm at batch 1) that "
    "the graph onnxruntime optimizes (ORT_ENABLE_EXTENDED) runs in integer kernels (QLinearConv, QLinearMatMul, "
    "QGemm, MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulInteger, ConvInteger; MatMulNBits is weight-only)",
    "lat bN = median latency / FP32 median latency at batch N",
    "convert s, peak RSS MB = wall time and peak resident memory of the conversion's child process "
    "(quantcli's include its own accuracy check on the eval samples)",
    "FAILED = the conversion failed, or onnxruntime could not load or run its output",
]


def legend(results: list[CaseResult]) -> list[str]:
    """LEGEND, without the lines of columns no table has."""
    shown = {c for res in results for c in columns(res)}
    return [line for line in LEGEND if not line.startswith("MatMul W = ") or "MatMul W" in shown]


def _float_none(results: list[CaseResult]) -> str:
    if not any(
        r.tool in (QUANTCLI_STATIC, QUANTCLI_DYNAMIC) and r.latency for res in results for r in res.rows
    ):
        return "not measured: this run timed no quantcli static or dynamic row"
    return "none: every quantcli static and dynamic row has a latency ratio below 1.0"


def _slower_none(results: list[CaseResult]) -> str:
    pairs = pairs_run(results)
    if not pairs:
        modes = ", ".join(str(ours.quantcli_mode) for ours, _ in PAIRS)
        return f"not measured: this run timed no quantcli row ({modes}) together with onnxruntime's matching tool"
    modes = "/".join(str(ours.quantcli_mode) for ours, _ in pairs)
    return f"none: no quantcli {modes} row is more than 5% slower than onnxruntime's"


def sections(results: list[CaseResult]) -> list[tuple[str, list[str]]]:
    return [
        (
            "Where quantcli is not faster than FP32: what onnxruntime ran in float",
            float_notes(results) or [_float_none(results)],
        ),
        (
            "Where quantcli is slower than onnxruntime's matching tool: what each ran in float",
            slower_notes(results) or [_slower_none(results)],
        ),
    ]


def render_text(header: list[str], results: list[CaseResult], notes: list[str]) -> str:
    parts = [*header, ""]
    for res in results:
        parts += [case_title(res), text_table(res), ""]
    parts += [f"legend: {line}" for line in legend(results)]
    for title, lines in sections(results):
        parts += ["", f"{title}:"] + [f"- {n}" for n in lines]
    return "\n".join(parts + ([""] + [f"note: {n}" for n in notes] if notes else []))


TITLE = "quantcli vs onnxruntime.quantization and onnxconverter-common"


def render_markdown(
    header: list[str], results: list[CaseResult], notes: list[str], title: str = TITLE
) -> str:
    parts = [f"# {title}", ""]
    parts += [f"- {line}" for line in header] + [""]
    for res in results:
        parts += [f"## {res.case.name}", "", case_title(res), "", markdown_table(res), ""]
    parts += ["Columns:", ""] + [f"- {line}" for line in legend(results)] + [""]
    for title, lines in sections(results):
        parts += [f"## {title}", ""] + [f"- {n}" for n in lines] + [""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)
