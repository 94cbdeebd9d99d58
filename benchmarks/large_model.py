"""Time and peak memory of conversion on a synthetic ~500 MB model, in each mode.

Dev script, not a test. Builds an MLP of 8 MatMul layers with 4096x4096 float32 weights (512 MiB of
weights) in a temporary directory, writes 16 calibration samples, then converts it in child
processes (`_bench_convert.py`) with quantcli in each of `--modes` (static, dynamic, fp16,
weights-int8 by default; the calibrated modes on the samples, every mode evaluated on them) and with
onnxruntime.quantization's quantize_static (QDQ, per-channel, MinMax, no quant_pre_process) and
quantize_dynamic (per-channel), and prints wall time and peak RSS (VmHWM) of each as a multiple of the
model size, beside issue #18's bound (2x the model + 200 MB).

    python benchmarks/large_model.py [--layers 8] [--width 4096] [--samples 16] [--modes static,dynamic] [--json FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from _bench_cases import Case
from _bench_convert import ORT_DYNAMIC_PER_CHANNEL, ORT_STATIC_PLAIN, Tool, convert
from _bench_report import command_line, run_header, write_json
from onnx import TensorProto, helper, numpy_helper

CALIBRATED = ("static", "mixed", "fp16")  # the modes converted with --calib (fp16: its overflow check)


def build(path: Path, layers: int, width: int) -> None:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    for i in range(layers):
        w = (rng.standard_normal((width, width), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"h{i}"], name=f"relu{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def tools(modes: str) -> list[Tool]:
    quantcli = [
        Tool(f"quantcli-{m}", f"quantcli {m}", m, needs_calib=m in CALIBRATED) for m in modes.split(",") if m
    ]
    return [*quantcli, ORT_STATIC_PLAIN, ORT_DYNAMIC_PER_CHANNEL]


def measure(tool: Tool, case: Case, size: int, bound: int, workdir: Path) -> dict[str, object]:
    """One conversion in its child process: wall time, peak RSS (and / the model, within the bound), output."""
    done = convert(tool, case, workdir)
    row: dict[str, object] = {"tool": tool.label, "seconds": done.wall_s, "error": done.error}
    if done.output is not None and done.peak_rss_mb is not None:
        peak = done.peak_rss_mb * 2**20
        row |= {"peak_rss_mib": done.peak_rss_mb, "x_model": peak / size, "in_bound": peak <= bound}
        row["output_mib"] = done.output.stat().st_size / 2**20
        done.output.unlink()
    return row


def line(row: dict) -> str:
    if "peak_rss_mib" not in row:
        return f"{row['tool']:<26} failed: {row['error'] or 'no peak RSS'}"
    return (
        f"{row['tool']:<26} {row['seconds']:>8.1f} {row['peak_rss_mib']:>13.0f} {row['x_model']:>8.2f} "
        f"{'yes' if row['in_bound'] else 'NO':>9} {row['output_mib']:>8.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument(
        "--modes", default="static,dynamic,fp16,weights-int8", help="quantcli's modes, comma-separated"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    header = run_header(command_line(__file__, argv))
    print("\n".join([*header, ""]), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model = d / "big.onnx"
        build(model, args.layers, args.width)
        calib = d / "calib"
        calib.mkdir()
        rng = np.random.default_rng(1)
        for i in range(args.samples):
            np.savez(calib / f"s{i:03d}.npz", input=rng.standard_normal((1, args.width), dtype=np.float32))
        size = model.stat().st_size
        print(
            f"model: {size / 2**20:.0f} MiB ({args.layers} x MatMul {args.width}x{args.width}), {args.samples} samples"
        )
        bound = 2 * size + (200 << 20)
        print(f"bound (issue #18): 2x model + 200 MB = {bound / 2**20:.0f} MiB")
        print(
            f"{'tool':<26} {'seconds':>8} {'peak RSS MiB':>13} {'x model':>8} {'in bound':>9} {'out MiB':>8}"
        )
        case = Case("big", model, calib, calib)  # evaluated on the calibration samples
        for tool in tools(args.modes):
            rows.append(measure(tool, case, size, bound, d))
            print(line(rows[-1]), flush=True)
    figures = {"layers": args.layers, "width": args.width, "samples": args.samples, "model_bytes": size}
    write_json(args.json, header, figures | {"bound_bytes": bound, "rows": rows})


if __name__ == "__main__":
    main()
