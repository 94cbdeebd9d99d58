"""How long conversion takes, and in how much memory: quantcli static per stage vs onnxruntime.

A dev script, not a test. Run from the repository root:

    python benchmarks/convert_time.py                        # EfficientNet-Lite0 and MiniLM
    python benchmarks/convert_time.py --cases digits_cnn effnet_lite0 --rounds 3 --json times.json

For every case it runs, each in its own child process (`_bench_convert.py`, a fresh working
directory), the tools in turn, `--rounds` times:

- `quantcli convert MODEL --mode static --calib DIR --eval DIR -o OUT --json` with quantcli's
  default calibration method, and again with `--calib-method minmax`; the stage seconds are the
  report's `seconds` (preprocess, calibrate, speed_plan, plan, rewrite, verify, latency, total);
- onnxruntime's `quant_pre_process` then `quantize_static` (QDQ, per-channel, UInt8 activations, Int8
  weights, MinMax) on the same calibration files, each step timed.

The table gives the child's wall time (Python start and imports included), its peak RSS (VmHWM), the
stages, and the wall time as a ratio to onnxruntime's; with several rounds, the medians. quantcli's
wall time includes its accuracy check on the eval samples and its latency check against FP32, which
onnxruntime's quantizer does not do (the `verify` and `latency` columns). The header records the CPU and its ISA flags, the versions and the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _bench_cases import REAL_NAMES, SAMPLE_NAMES, all_cases
from _bench_convert import ORT_STATIC, TIME_TOOLS, Conversion, Tool, convert
from _bench_report import command_line, md_table, plain_table, run_header, write_json

QUANTCLI_STAGES = ("preprocess", "calibrate", "speed_plan", "plan", "rewrite", "verify", "latency", "total")
ORT_STAGES = ("quant_pre_process", "quantize_static")


def summary(tool: Tool, runs: list[Conversion]) -> dict[str, object]:
    """A tool's conversions of one case: each round's figures, and their medians."""
    failed = next((r.error for r in runs if r.error), None)
    per_round = [
        {
            "wall_s": round(r.wall_s, 3),
            "peak_rss_mb": r.peak_rss_mb,
            "seconds": {k: round(float(v), 3) for k, v in dict(r.report.get("seconds", {})).items()},
        }
        for r in runs
        if r.error is None
    ]
    stages = sorted({k for r in per_round for k in r["seconds"]})
    method = next((r.report["calib_method"] for r in runs if r.report.get("calib_method")), None)
    return {
        "tool": tool.key,
        "label": f"{tool.label} ({method})" if method else tool.label,
        "error": failed,
        "notes": sorted({n for r in runs for n in r.notes}),
        "rounds": per_round,
        "wall_s": _median([r["wall_s"] for r in per_round]),
        "peak_rss_mb": _median([r["peak_rss_mb"] for r in per_round if r["peak_rss_mb"] is not None]),
        "seconds": {s: _median([r["seconds"][s] for r in per_round if s in r["seconds"]]) for s in stages},
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def cells(rows: list[dict[str, object]]) -> tuple[list[str], list[list[str]]]:
    """The table's head and one line of cells per tool (a failed one: its error, the rest '-')."""
    ort_wall = next((r["wall_s"] for r in rows if r["tool"] == ORT_STATIC.key), None)
    head = ["tool", "wall s", "/ ort", "peak RSS MB", *QUANTCLI_STAGES, *ORT_STAGES]
    lines = []
    for r in rows:
        if r["error"]:
            lines.append([str(r["label"]), f"FAILED: {r['error']}", *["-"] * (len(head) - 2)])
            continue
        wall, secs = r["wall_s"], r["seconds"]
        ratio = f"{wall / ort_wall:.2f}" if wall and ort_wall else "-"
        lines.append(
            [
                str(r["label"]),
                f"{wall:.1f}",
                ratio,
                f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-",
                *(f"{secs[s]:.2f}" if s in secs else "-" for s in (*QUANTCLI_STAGES, *ORT_STAGES)),
            ]
        )
    return head, lines


def table(case: str, model_mb: float, rows: list[dict[str, object]]) -> str:
    head, lines = cells(rows)
    return f"{case} ({model_mb:.1f} MB)\n" + plain_table(head, lines)


def markdown(header: list[str], notes: list[str], results: list[dict], end_load: str) -> str:
    text = [
        "# Conversion time and memory (issue #18)",
        "",
        *(f"- {line}" for line in [*header, end_load, *notes]),
    ]
    text += [
        "",
        "Wall time of the whole child process (Python start and imports included) and its peak RSS;",
        "quantcli's stage seconds from its `--json` report (its `verify` and `latency` checks are work",
        "onnxruntime's quantizer does not do); `/ ort`: wall time over onnxruntime's. Medians of the rounds.",
    ]
    for r in results:
        head, lines = cells(r["tools"])
        text += ["", f"## {r['case']} ({r['model_mb']:.1f} MB)", "", md_table(head, lines)]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(REAL_NAMES),
        choices=[*SAMPLE_NAMES, *REAL_NAMES],
        help="models to convert (default: the real models that have been exported)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="conversions per tool (medians; default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cases, notes = all_cases()
    cases = [c for c in cases if c.name in args.cases]
    header = run_header(command_line(__file__, argv))
    print("\n".join(header + notes), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="convert-time-") as tmp:
        for case in cases:
            runs: dict[Tool, list[Conversion]] = {tool: [] for tool in TIME_TOOLS}
            for _ in range(args.rounds):  # the tools in turn, so that a change in load hits each
                for tool in TIME_TOOLS:
                    runs[tool].append(convert(tool, case, Path(tmp)))
            rows = [summary(tool, conversions) for tool, conversions in runs.items()]
            model_mb = case.model.stat().st_size / 1e6
            print("\n" + table(case.name, model_mb, rows), flush=True)
            results.append({"case": case.name, "model_mb": round(model_mb, 2), "tools": rows})
            for f in Path(tmp).glob(f"{case.name}.*"):  # outputs of this case: not needed any more
                if f.is_file():
                    f.unlink()
    end_load = f"load average (1 min) at the end {os.getloadavg()[0]:.2f}"
    print("\n" + end_load)
    write_json(args.json, header, {"rounds": args.rounds, "cases": results, "notes": notes})
    if args.markdown:
        Path(args.markdown).write_text(markdown(header, notes, results, end_load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
