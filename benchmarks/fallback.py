"""Accuracy to a budget (issue #19): quantcli static by default, quantcli static with a goal and
`--fallback float`, and onnxruntime's quantize_static, side by side in one run.

For every case: each conversion in its own child process (wall time, peak RSS), then in this
process the accuracy of every output on the case's eval samples against FP32, on this CPU's
kernels and on exact integer kernels (verify.exact_kernel_model: what VNNI and ARM CPUs compute;
the same figures here unless this CPU's U8S8 kernels can saturate on the model), the fallback
nodes and search time from quantcli's --json, and latency against FP32 (interleaved, median).

    python benchmarks/fallback.py                       # every case with its default goal
    python benchmarks/fallback.py --cases effnet_lite0 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_cases import REAL_NAMES, SAMPLE_NAMES, Case, all_cases, batch_of, load_feeds, load_labels  # noqa: E402
from _bench_convert import ORT_STATIC, QUANTCLI_STATIC, Tool, convert  # noqa: E402
from _bench_measure import make_session, median_latencies, run_outputs, score  # noqa: E402
from _bench_report import cpu_name, quantcli_revision  # noqa: E402

# The goal of each case (issue #19's targets for the real models; label accuracy for the digits).
GOALS = {
    "effnet_lite0": ("--min-top1-agreement", "0.98"),
    "minilm": ("--min-cosine", "0.999"),
    **{name: ("--max-accuracy-drop", "0.0") for name in SAMPLE_NAMES},
}


def fallback_tool(case: Case) -> Tool:
    flag, bound = GOALS[case.name]
    return Tool(
        f"quantcli-fallback:{flag[2:]}={bound}",
        f"quantcli static {flag} {bound} --fallback float",
        "static",
        (flag, bound, "--fallback", "float", "--keep-best"),
        needs_calib=True,
        ok_exit_codes=(0, 3),  # 3: the goal was not met; --keep-best still writes the best model
    )


def exact_copy(path: Path) -> Path:
    """The model on exact integer kernels (UINT8-stored INT8 weights), or itself when nothing changes."""
    import onnx

    from quantcli.verify import exact_kernel_model

    exact = exact_kernel_model(onnx.load(str(path)))
    if exact is None:
        return path
    out = path.with_suffix(".exact.onnx")
    onnx.save(exact, str(out))
    return out


def run_case(case: Case, workdir: Path, rounds: int) -> dict:
    feeds = load_feeds(case.eval)
    labels = load_labels(case)
    fp32 = run_outputs(make_session(case.model), feeds, case.output)
    own = score(fp32, fp32, labels, case.classifier)
    rows: dict[str, dict] = {"fp32": {"label": "fp32", "size": 1.0, "host": {"labels": own.labels}}}
    paths = {"fp32": case.model}
    for tool in (QUANTCLI_STATIC, fallback_tool(case), ORT_STATIC):
        done = convert(tool, case, workdir)
        row = {"label": tool.label, "convert_s": round(done.wall_s, 2), "peak_rss_mb": done.peak_rss_mb}
        if done.output is None:
            row["error"] = done.error
            rows[tool.key] = row
            continue
        report = done.report if tool.quantcli_mode else {}
        search = report.get("search") or {}
        row.update(
            size=os.path.getsize(done.output) / os.path.getsize(case.model),
            exit_code=report.get("exit_code"),
            fallback_nodes=len(search.get("moved", [])) if search else None,
            candidates=search.get("candidates"),
            plans_measured=len(search.get("steps", [])) if search else None,
            search_s=search.get("seconds"),
            compute_nodes=report.get("compute_nodes"),
        )
        for kernels, path in (("host", done.output), ("exact", exact_copy(done.output))):
            acc = score(run_outputs(make_session(path), feeds, case.output), fp32, labels, case.classifier)
            row[kernels] = {"labels": acc.labels, "top1_agree": acc.top1_agree, "cosine": acc.cosine}
        rows[tool.key] = row
        paths[tool.key] = done.output
    for batch in case.batches:
        feed = batch_of(feeds, batch)
        sessions = {k: make_session(p) for k, p in paths.items()}
        medians = median_latencies(sessions, feed, rounds)
        for key in sessions:
            rows[key].setdefault("latency_ratio", {})[batch] = medians[key] / medians["fp32"]
    return {"case": case.name, "goal": " ".join(GOALS[case.name]), "rows": list(rows.values())}


def render(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [
            f"### {r['case']} (goal of the fallback row: {r['goal']})",
            "",
            "| conversion | top-1 agree (host / exact) | cosine (host / exact) | acc | fallback nodes | plans | search s | size | latency / FP32 | convert s | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            if "error" in row:
                lines.append(f"| {row['label']} | FAILED: {row['error']} |" + " |" * 9)
                continue
            host, exact = row.get("host", {}), row.get("exact", {})

            def pair(key: str, fmt: str, host=host, exact=exact) -> str:  # noqa: ANN001
                if host.get(key) is None or exact.get(key) is None:
                    return "-"
                return f"{host[key]:{fmt}} / {exact[key]:{fmt}}"

            acc = host.get("labels")
            lat = ", ".join(f"b{b} {v:.3f}" for b, v in row.get("latency_ratio", {}).items())
            fallback = "-" if row.get("fallback_nodes") is None else str(row["fallback_nodes"])
            if row.get("candidates"):  # 0: the plan met the goal as it was, nothing was ranked
                fallback += f" of {row['candidates']}"
            lines.append(
                f"| {row['label']} | {pair('top1_agree', '.3f')} | {pair('cosine', '.5f')} | "
                f"{'-' if acc is None else f'{acc:.3f}'} | {fallback} | {row.get('plans_measured') or '-'} | "
                f"{row.get('search_s') or '-'} | {row['size']:.3f} | {lat} | {row.get('convert_s', '-')} | "
                f"{'-' if row.get('peak_rss_mb') is None else round(row['peak_rss_mb'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="*", default=[*SAMPLE_NAMES, *REAL_NAMES])
    parser.add_argument("--rounds", type=int, default=200, help="latency rounds per batch size")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    args = parser.parse_args()
    cases, notes = all_cases()
    chosen = [c for c in cases if c.name in args.cases]
    header = [
        f"CPU: {cpu_name()}",
        f"quantcli {quantcli_revision()}",
        f"command: python benchmarks/fallback.py {' '.join(sys.argv[1:])}",
        "exact = the same model with its INT8 weights stored UINT8 (what VNNI/ARM CPUs compute); "
        "latency: 1 thread, interleaved, median",
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="quantcli-fallback-") as tmp:
        for case in chosen:
            results.append(run_case(case, Path(tmp), args.rounds))
            print(render(results[-1:]), flush=True)
    text = "\n".join(header + notes) + "\n\n" + render(results)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
