"""Time and peak memory of conversion on a synthetic ~500 MB model, in each mode.

Dev script, not a test. Builds an MLP of 8 MatMul layers with 4096x4096 float32 weights (512 MiB of
weights) in a temporary directory, writes 16 calibration samples, then converts it in child
processes with quantcli in each of `--modes` (static, dynamic, fp16, weights-int8 by default; the
calibrated modes on the samples, every mode evaluated on them) and with onnxruntime.quantization's
quantize_static (QDQ, per-channel, MinMax) and quantize_dynamic, and prints wall time and peak RSS
(VmHWM) of each as a multiple of the model size, beside issue #18's bound (2x the model + 200 MB).

    python benchmarks/large_model.py [--layers 8] [--width 4096] [--modes static,dynamic]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


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


QUANTCLI = """
    from quantcli.api import ConvertOptions, convert
    from pathlib import Path
    calibrated = MODE in ("static", "mixed", "fp16")
    convert(ConvertOptions(model=Path(MODEL), output=Path(OUT), mode=MODE, eval=Path(CALIB),
                           calib=Path(CALIB) if calibrated else None))
"""
CHILD = {
    "onnxruntime static": """
        import glob, numpy as np
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                              QuantType, quantize_static)
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(sorted(glob.glob(CALIB + "/*.npz")))
            def get_next(self):
                f = next(self.it, None)
                return None if f is None else {"input": np.load(f)["input"]}
        quantize_static(MODEL, OUT, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    """,
    "onnxruntime dynamic": """
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(MODEL, OUT, per_channel=True, weight_type=QuantType.QInt8)
    """,
}

FOOTER = """
import json, time
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - T0, "peak_kib": int(hwm)}))
"""


def run_child(tool: str, model: Path, out: Path, calib: Path, cwd: Path) -> dict:
    code = "import time; T0 = time.perf_counter()\n"
    code += f"MODEL, OUT, CALIB = {str(model)!r}, {str(out)!r}, {str(calib)!r}\n"
    if tool.startswith("quantcli "):
        code += f"MODE = {tool.split()[1]!r}\n" + textwrap.dedent(QUANTCLI) + FOOTER
    else:
        code += textwrap.dedent(CHILD[tool]) + FOOTER
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument(
        "--modes", default="static,dynamic,fp16,weights-int8", help="quantcli's modes, comma-separated"
    )
    args = parser.parse_args()
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
        tools = [f"quantcli {m}" for m in args.modes.split(",") if m] + list(CHILD)
        for tool in tools:
            out = d / f"{tool.replace(' ', '_')}.onnx"
            r = run_child(tool, model, out, calib, d)
            if "error" in r:
                print(f"{tool:<26} failed: {r['error']}")
                continue
            peak = r["peak_kib"] * 1024
            print(
                f"{tool:<26} {r['seconds']:>8.1f} {peak / 2**20:>13.0f} {peak / size:>8.2f} "
                f"{'yes' if peak <= bound else 'NO':>9} {out.stat().st_size / 2**20:>8.0f}"
            )
            out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
