"""Time and peak memory of static INT8 conversion on a synthetic ~500 MB model.

Dev script, not a test. Builds an MLP of 8 MatMul layers with 4096x4096 float32 weights (512 MiB of
weights) in a temporary directory, writes 16 calibration samples, then converts it in child
processes with quantcli and with onnxruntime.quantization.quantize_static (QDQ, per-channel,
MinMax), and prints wall time and peak RSS (VmHWM) of each as a multiple of the model size.

    python benchmarks/large_model.py [--layers 8] [--width 4096]
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


CHILD = {
    "quantcli": """
        from quantcli.api import ConvertOptions, convert
        from pathlib import Path
        convert(ConvertOptions(model=Path(MODEL), output=Path(OUT), calib=Path(CALIB), eval=Path(CALIB)))
    """,
    "onnxruntime": """
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
}

FOOTER = """
import json, time
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - T0, "peak_kib": int(hwm)}))
"""


def run_child(tool: str, model: Path, out: Path, calib: Path, cwd: Path) -> dict:
    code = "import time; T0 = time.perf_counter()\n"
    code += f"MODEL, OUT, CALIB = {str(model)!r}, {str(out)!r}, {str(calib)!r}\n"
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
        print(f"{'tool':<12} {'seconds':>8} {'peak RSS MiB':>13} {'x model':>8} {'out MiB':>8}")
        for tool in CHILD:
            out = d / f"{tool}.onnx"
            r = run_child(tool, model, out, calib, d)
            if "error" in r:
                print(f"{tool:<12} failed: {r['error']}")
                continue
            peak = r["peak_kib"] * 1024
            print(
                f"{tool:<12} {r['seconds']:>8.1f} {peak / 2**20:>13.0f} {peak / size:>8.2f} {out.stat().st_size / 2**20:>8.0f}"
            )


if __name__ == "__main__":
    main()
