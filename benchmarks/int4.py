"""weights-int4 side by side: quantcli vs onnxruntime's MatMulNBitsQuantizer on all-MiniLM-L6-v2.

A dev script, not a test. From the repository root, once benchmarks/real_models/export.py has
written benchmarks/.cache/minilm:

    python benchmarks/int4.py [--cache benchmarks/.cache] [--rounds 50] [--json FILE]

Both tools run in blocks of 32 and 128, symmetric and asymmetric, in this process, from the same
FP32 model; onnxruntime's `MatMulNBitsQuantizer(model, block_size=B, is_symmetric=S)` with its
other defaults (MatMul only, round to nearest on min/max, no accuracy_level). One table, under the
benchmarks' header (CPU, versions, command, load):

- size: output file / FP32 file;
- MatMul weights: bytes of the MatMul/Gemm weights as stored (float weights, or MatMulNBits'
  packed values + scales + zero points), and their ratio to FP32's;
- cosine: of the `embedding` output vs FP32 on the eval samples (mean and minimum);
- latency: median over `--rounds` interleaved rounds (every model once per round, in a seeded
  random order), onnxruntime CPU provider, one intra-op thread, batch 1, divided by FP32's median;
  an FP32 control session timed alongside shows the noise of the ratios.

quantcli also stores the word-embedding table (half of MiniLM's parameters) INT8 per row;
onnxruntime's quantizer leaves it float, which is most of the difference in file size.
`--json FILE` also writes the header, the CPU's flags and every figure of the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from _bench_cases import HERE, REPO, Case, load_feeds, real_cases, sample_files
from _bench_convert import matmul_nbits
from _bench_measure import cosines, make_session, median_latencies, run_outputs
from _bench_report import command_line, log, run_header, write_json

sys.path.insert(0, str(REPO))  # this checkout's quantcli, not an installed one

from quantcli.api import ConvertOptions, convert  # noqa: E402
from quantcli.quantize.int4 import matmul_weight_bytes  # noqa: E402

BLOCKS = (32, 128)
FP32 = "fp32"
CONTROL = "fp32-control"


@dataclass
class Row:
    key: str
    path: Path
    seconds: float = 0.0
    size_ratio: float = 1.0
    weight_bytes: int = 0
    weight_ratio: float = 1.0
    cosine: float = 1.0
    cosine_min: float = 1.0
    latency: float = 1.0


def quantcli_int4(case: Case, block: int, symmetric: bool, out: Path) -> Row:
    key = f"quantcli b{block} {'sym' if symmetric else 'asym'}"
    path = out / f"quantcli_{block}_{int(symmetric)}.onnx"
    t = time.perf_counter()
    convert(
        ConvertOptions(
            model=case.model, output=path, mode="weights-int4", block_size=block, weight_symmetric=symmetric
        )
    )
    return Row(key, path, time.perf_counter() - t)


def ort_int4(case: Case, block: int, symmetric: bool, out: Path) -> Row:
    key = f"ort b{block} {'sym' if symmetric else 'asym'}"
    path = out / f"ort_{block}_{int(symmetric)}.onnx"
    t = time.perf_counter()
    matmul_nbits(str(case.model), str(path), block_size=block, is_symmetric=symmetric)
    return Row(key, path, time.perf_counter() - t)


def minilm_case(cache: Path) -> Case:
    cases, notes = real_cases(cache)
    case = next((c for c in cases if c.name == "minilm"), None)
    if case is None:
        raise SystemExit("; ".join(n for n in notes if n.startswith("minilm")))
    return case


def run(case: Case, rounds: int, out: Path) -> tuple[list[Row], float, float]:
    rows = [Row(FP32, case.model)]
    for block in BLOCKS:
        for symmetric in (False, True):
            for make in (quantcli_int4, ort_int4):
                log(f"converting: {make.__name__} block {block} {'symmetric' if symmetric else 'asymmetric'}")
                rows.append(make(case, block, symmetric, out))
    fp32_bytes = case.model.stat().st_size
    feeds = load_feeds(case.eval)
    sessions = {r.key: make_session(r.path) for r in rows}
    reference = run_outputs(sessions[FP32], feeds, case.output)
    for r in rows:
        r.size_ratio = r.path.stat().st_size / fp32_bytes
        r.weight_bytes = matmul_weight_bytes(onnx.load(r.path))
        r.weight_ratio = r.weight_bytes / rows[0].weight_bytes
        each = cosines(run_outputs(sessions[r.key], feeds, case.output), reference)
        r.cosine, r.cosine_min = float(each.mean()), float(each.min())
    log(f"latency: {len(sessions) + 1} sessions, {rounds} interleaved rounds ...")
    medians = median_latencies(sessions | {CONTROL: make_session(case.model)}, feeds[0], rounds)
    for r in rows:
        r.latency = medians[r.key] / medians[FP32]
    return rows, medians[FP32], medians[CONTROL] / medians[FP32]


def render(rows: list[Row], fp32_ms: float, control: float, rounds: int, samples: int) -> str:
    lines = [
        f"all-MiniLM-L6-v2, {samples} eval samples; latency: batch 1, 1 thread, median of {rounds} interleaved "
        f"rounds, FP32 {fp32_ms:.2f} ms, FP32 control ratio {control:.3f}",
        f"{'model':<20} {'convert s':>9} {'size':>7} {'MatMul weights B':>17} {'ratio':>7} "
        f"{'cosine':>8} {'cos min':>8} {'latency':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r.key:<20} {r.seconds:>9.2f} {r.size_ratio:>7.3f} {r.weight_bytes:>17,} "
            f"{r.weight_ratio:>7.3f} {r.cosine:>8.5f} {r.cosine_min:>8.5f} {r.latency:>8.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--rounds", type=int, default=50, help="latency rounds (at least 30)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 30:
        parser.error("--rounds must be at least 30")
    logging.disable(logging.INFO)  # onnxruntime's quantizer logs every node
    case = minilm_case(args.cache)
    header = run_header(command_line(__file__, argv))
    with tempfile.TemporaryDirectory() as tmp:
        rows, fp32_s, control = run(case, args.rounds, Path(tmp))
    samples = len(sample_files(case.eval))
    print("\n".join([*header, "", render(rows, fp32_s * 1e3, control, args.rounds, samples)]))
    figures = [{k: v for k, v in asdict(r).items() if k != "path"} for r in rows]
    write_json(
        args.json,
        header,
        {
            "rounds": args.rounds,
            "samples": samples,
            "fp32_ms": fp32_s * 1e3,
            "control": control,
            "rows": figures,
        },
    )


if __name__ == "__main__":
    main()
