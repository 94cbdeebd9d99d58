"""Opt-in (`pytest -m large`): a model just over 2 GB loads, converts and saves without a traceback.

Needs about 10 GB of RAM and a few minutes; not part of the default suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from conftest import ROOT
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.large

LAYERS, WIDTH = 34, 4096  # 34 x 64 MiB = 2.13 GiB of float32 weights


def build(path) -> int:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(LAYERS):
        w = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.float32(np.sqrt(WIDTH))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="big.onnx.data")
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith("big.onnx"))


CHILD = """
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from quantcli.api import ConvertOptions, convert
r = convert(ConvertOptions(model=Path(sys.argv[1]), output=Path(sys.argv[2]), mode=sys.argv[3],
                           calib=Path(sys.argv[4]) if sys.argv[4] != "-" else None, calib_samples=4))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_kib": int(hwm), "out": r.output_bytes, "in": r.input_bytes}))
"""


@pytest.mark.parametrize("mode", ["weights-int8", "static"])
def test_model_over_2gb_converts(tmp_path, mode: str) -> None:
    size = build(tmp_path / "big.onnx")
    assert size > 2**31
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        np.savez(
            calib / f"s{i}.npz", input=np.random.default_rng(i).standard_normal((1, WIDTH), dtype=np.float32)
        )
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(CHILD),
            str(tmp_path / "big.onnx"),
            str(out),
            mode,
            str(calib) if mode == "static" else "-",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\n{mode}: {figures['seconds']:.1f} s, peak RSS {figures['peak_kib'] / 2**20:.2f} GiB "
        f"= {figures['peak_kib'] * 1024 / size:.2f}x the model, output {figures['out'] / 2**20:.0f} MiB"
    )
    assert figures["in"] == size
    assert out.exists() and figures["out"] < 0.3 * size
    onnx.checker.check_model(str(out), full_check=True)


def test_saving_a_model_over_2gb_uses_external_data(tmp_path) -> None:
    from quantcli.model_io import file_size, load_model, save_model

    size = build(tmp_path / "big.onnx")
    model = load_model(tmp_path / "big.onnx")
    out = tmp_path / "out" / "copy.onnx"
    out.parent.mkdir()
    written = save_model(model, out)
    names = sorted(p.name for p in out.parent.iterdir())
    assert len(names) == 2 and names[0] == "copy.onnx" and names[1].endswith(".data")
    assert written == file_size(out) and written >= size - 2**20
    onnx.checker.check_model(str(out), full_check=True)
