"""The reference benchmark: quantcli vs onnxruntime.quantization and onnxconverter-common.

A dev script, not a test. Run from the repository root:

    python benchmarks/compare_ort.py --markdown benchmarks/RESULTS.md
    python benchmarks/compare_ort.py --preset modes --markdown benchmarks/MODES.md

For every case (the three sample models, and the real models of benchmarks/real_models once
exported into benchmarks/.cache) it:

1. converts the FP32 model with every tool, each conversion in its own child process (wall time and
   peak RSS from ``os.wait4``): quantcli static / dynamic / weights-int8 / fp16 / bf16 (the CLI with
   ``--json``); onnxruntime ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, UInt8
   activations, Int8 weights, MinMax, the same calibration files) and ``quantize_dynamic`` (its
   defaults); onnxconverter-common ``convert_float_to_float16(model, keep_io_types=True)``;
2. scores every output on the held-out samples against FP32: accuracy vs labels (when there are
   labels), top-1 agreement (classifiers), mean cosine of the scored output; a model onnxruntime
   cannot load or run is a FAILED row, not a crash;
3. reports the file size ratio to FP32 and the share of the FP32 model's multiply-accumulates that
   the graph onnxruntime optimizes runs in integer kernels (``_bench_kernels.py``);
4. measures latency ratios to FP32 (onnxruntime CPU, one intra-op thread, every model of the case
   interleaved in one process in a random order every round, medians) at batch 1, and batch 32 for the
   digits models.

``--preset modes`` (issue #8) runs the precision modes instead: quantcli fp16 (also with --calib),
bf16, weights-int8, weights-int4, mixed, static with int16 activations and static INT8 for reference,
next to onnxconverter-common's FP16 and onnxruntime's ``MatMulNBitsQuantizer`` (INT4, block 32,
symmetric), and adds the bytes of the MatMul/Gemm weights as a share of FP32's (``_bench_weights.py``).
A mode this quantcli lacks is a FAILED row with quantcli's error.

All outputs go to a temporary directory; nothing is written into the repository except the
optional ``--markdown`` file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
from _bench_cases import (
    BIG_BATCH,
    REAL_NAMES,
    SAMPLE_NAMES,
    Case,
    all_cases,
    batch_of,
    load_feeds,
    load_labels,
)
from _bench_convert import (
    ALL_TOOLS,
    FP32,
    MODES_TOOLS,
    QUANTCLI_STATIC,
    TOOLS,
    TOOLS_BY_KEY,
    Conversion,
    Tool,
    convert,
    first_line,
)
from _bench_kernels import analyze, total_macs
from _bench_measure import make_session, median_latencies, run_outputs, score
from _bench_report import (
    TITLE,
    CaseResult,
    Row,
    command_line,
    header_lines,
    log,
    render_markdown,
    render_text,
)
from _bench_weights import matmul_weight_bytes

MIN_ROUNDS = 30
CONTROL = "fp32-control"  # a second session of the FP32 model, timed like the others


@dataclass(frozen=True)
class Preset:
    tools: tuple[Tool, ...]  # the rows, in table order (FP32 first)
    title: str  # the --markdown file's title
    weights: bool = False  # measure the MatMul/Gemm weight bytes (the MatMul W column)


PRESETS = {
    "default": Preset(TOOLS, TITLE),
    "modes": Preset(
        MODES_TOOLS,
        "quantcli precision modes vs onnxconverter-common FP16 and onnxruntime MatMulNBits INT4",
        weights=True,
    ),
}


# --------------------------------------------------------------------------- one case


def convert_all(case: Case, tools: list[Tool], workdir: Path) -> list[Row]:
    rows = [Row(case, FP32)]
    for tool in tools:
        log(f"[{case.name}] {tool.label} ...")
        conversion = convert(tool, case, workdir)
        rows.append(Row(case, tool, conversion, error=conversion.error))
    return rows


def set_sizes(rows: list[Row]) -> None:
    """Output bytes / FP32 bytes for every model written, loadable or not."""
    for row in rows:
        path = row.case.model if row.conversion is None else row.conversion.output
        if path is not None and path.exists():
            row.size_ratio = path.stat().st_size / row.case.model.stat().st_size


def set_weight_ratios(rows: list[Row]) -> int:
    """MatMul/Gemm weight bytes / FP32's into the rows of every model written; returns FP32's bytes."""
    fp32 = matmul_weight_bytes(rows[0].case.model)
    for row in rows:
        path = row.case.model if row.conversion is None else row.conversion.output
        if fp32 and path is not None and path.exists():
            row.weight_ratio = matmul_weight_bytes(path) / fp32
    return fp32


def model_path(row: Row) -> Path | None:
    if row.conversion is None:
        return row.case.model
    return row.conversion.output if row.error is None else None


def open_sessions(rows: list[Row]) -> dict[str, ort.InferenceSession]:
    """A session per converted model; a model onnxruntime cannot load marks its row FAILED."""
    sessions = {}
    for row in rows:
        path = model_path(row)
        if path is None:
            continue
        try:
            sessions[row.tool.key] = make_session(path)
        except Exception as e:  # noqa: BLE001 - a model onnxruntime refuses is a result
            row.error = f"onnxruntime cannot load it: {first_line(e).replace(f'{path.parent}/', '')}"
    return sessions


def measure_accuracy(case: Case, rows: list[Row], sessions: dict[str, ort.InferenceSession]) -> None:
    feeds, labels = load_feeds(case.eval), load_labels(case)
    reference = run_outputs(sessions[FP32.key], feeds, case.output)
    for row in rows:
        session = sessions.get(row.tool.key)
        if session is None:
            continue
        try:
            values = run_outputs(session, feeds, case.output)
        except Exception as e:  # noqa: BLE001 - a model that fails to run is a result
            row.error = f"onnxruntime cannot run it: {first_line(e)}"
            del sessions[row.tool.key]
            continue
        row.accuracy = score(values, reference, labels, case.classifier)


def measure_latency(
    case: Case, rows: list[Row], sessions: dict[str, ort.InferenceSession], rounds: dict[int, int]
) -> tuple[dict[int, float], dict[int, float]]:
    """Latency ratios into the rows. Returns FP32's median seconds per batch size, and the ratio of a
    second FP32 session measured alongside (the noise floor of the ratios)."""
    feeds = load_feeds(case.eval)
    timed = sessions | {CONTROL: make_session(case.model)}
    fp32: dict[int, float] = {}
    control: dict[int, float] = {}
    for batch in case.batches:
        log(f"[{case.name}] latency at batch {batch}, {rounds[batch]} rounds ...")
        medians = median_latencies(timed, batch_of(feeds, batch), rounds[batch])
        fp32[batch] = medians[FP32.key]
        control[batch] = medians[CONTROL] / fp32[batch]
        for row in rows:
            if row.tool.key in medians:
                row.latency[batch] = medians[row.tool.key] / fp32[batch]
    return fp32, control


def measure_kernels(case: Case, rows: list[Row], workdir: Path) -> tuple[int, list[str]]:
    """Integer-kernel MAC shares into the rows; returns the FP32 model's MACs and notes."""
    feed = load_feeds(case.eval)[0]
    total = total_macs(case.model, feed, workdir)
    notes = []
    for row in rows:
        path = model_path(row)
        if path is None or row.error is not None:
            continue
        try:
            row.kernels = analyze(path, feed, workdir)
        except Exception as e:  # noqa: BLE001 - report it and go on with the other models
            notes.append(f"{case.name} / {row.tool.label}: integer-kernel analysis failed: {first_line(e)}")
            continue
        row.int_mac_share = row.kernels.share(total)
        coverage = row.kernels.coverage(total)
        if abs(coverage - 1.0) > 0.01 or row.kernels.unmeasured:
            notes.append(
                f"{case.name} / {row.tool.label}: the optimized graph's integer + float MACs are {coverage:.1%} "
                f"of the FP32 model's (compute ops with unmeasured shapes: {dict(row.kernels.unmeasured) or 'none'})"
            )
    return total, notes


def conversion_notes(case: Case, rows: list[Row]) -> list[str]:
    notes = []
    for row in rows:
        conversion = row.conversion
        if conversion is None:
            continue
        notes += [f"{case.name} / {row.tool.label}: {n}" for n in conversion.notes]
        if row.tool == QUANTCLI_STATIC:
            notes += cross_check(case, conversion, row)
    return notes


def cross_check(case: Case, conversion: Conversion, row: Row) -> list[str]:
    """Note when quantcli's own --json accuracy disagrees with this script's measurement."""
    reported = conversion.report.get("accuracy")
    claimed = reported.get("candidate_accuracy") if isinstance(reported, dict) else None
    measured = row.accuracy.labels if row.accuracy else None
    if claimed is None or measured is None or abs(claimed - measured) < 1e-9:
        return []
    return [f"{case.name}: quantcli --json reports accuracy {claimed:.4f}, measured here {measured:.4f}"]


def run_case(
    case: Case, tools: list[Tool], workdir: Path, rounds: dict[int, int], weights: bool = False
) -> CaseResult:
    rows = convert_all(case, tools, workdir)
    set_sizes(rows)
    weight_bytes = set_weight_ratios(rows) if weights else None
    sessions = open_sessions(rows)
    log(f"[{case.name}] accuracy ...")
    measure_accuracy(case, rows, sessions)
    fp32_seconds, control = measure_latency(case, rows, sessions, rounds)
    sessions.clear()
    log(f"[{case.name}] integer-kernel analysis ...")
    total, kernel_notes = measure_kernels(case, rows, workdir)
    notes = conversion_notes(case, rows) + kernel_notes
    return CaseResult(case, rows, total, fp32_seconds, control, notes, weight_bytes)


# --------------------------------------------------------------------------- main


def tool_keys(text: str) -> list[str]:
    """--tools: one key, or several separated by commas."""
    keys = [k for k in text.split(",") if k]
    unknown = [k for k in keys if k not in TOOLS_BY_KEY]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown tool {', '.join(unknown) or repr(text)}; choose from {', '.join(TOOLS_BY_KEY)}"
        )
    return keys


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=1000, help="latency rounds at batch 1, digits models (default 1000)"
    )
    parser.add_argument(
        "--rounds-b32",
        type=int,
        default=200,
        help=f"latency rounds at batch {BIG_BATCH}, digits models (default 200)",
    )
    parser.add_argument(
        "--rounds-real", type=int, default=300, help="latency rounds of the real models (default 300)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=SAMPLE_NAMES + REAL_NAMES,
        help="only these models (default: all that exist)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="default: quantcli vs onnxruntime.quantization and onnxconverter-common (RESULTS.md); "
        "modes: the precision modes of issue #8, with the MatMul/Gemm weight bytes (MODES.md)",
    )
    parser.add_argument(
        "--tools",
        nargs="+",
        type=tool_keys,
        metavar="TOOL",
        help="only these conversions, space- or comma-separated, in the preset's order (default: the "
        f"preset's; FP32 is always measured): {', '.join(t.key for t in ALL_TOOLS)}",
    )
    args = parser.parse_args(argv)
    if min(args.rounds, args.rounds_b32, args.rounds_real) < MIN_ROUNDS:
        parser.error(f"--rounds, --rounds-b32 and --rounds-real must be at least {MIN_ROUNDS}")
    return args


def selected(args: argparse.Namespace) -> tuple[list[Case], list[Tool], list[str]]:
    cases, notes = all_cases()
    if args.cases:
        notes = [n for n in notes if n.split(":", 1)[0] in args.cases]
        cases = [c for c in cases if c.name in args.cases]
    preset = PRESETS[args.preset]
    order = preset.tools + tuple(t for t in ALL_TOOLS if t not in preset.tools)
    chosen = {TOOLS_BY_KEY[k] for keys in args.tools for k in keys} if args.tools else set(preset.tools)
    return cases, [t for t in order if t in chosen and t != FP32], notes


def rounds_for(case: Case, args: argparse.Namespace) -> dict[int, int]:
    if case.name in SAMPLE_NAMES:
        return {1: args.rounds, BIG_BATCH: args.rounds_b32}
    return {1: args.rounds_real}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    cases, tools, notes = selected(args)
    command = command_line(__file__, argv)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="compare_ort.") as tmp:
        for case in cases:
            results.append(run_case(case, tools, Path(tmp), rounds_for(case, args), preset.weights))
    settings = (
        f"{args.rounds} rounds at batch 1 and {args.rounds_b32} at batch {BIG_BATCH} (digits models), "
        f"{args.rounds_real} rounds at batch 1 (real models)"
    )
    load = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; run took {time.perf_counter() - started:.0f} s"
    header = header_lines(command, settings, load, tools)
    notes += [n for res in results for n in res.notes]
    print(render_text(header, results, notes), flush=True)
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(header, results, notes, preset.title))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
