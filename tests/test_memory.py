"""Memory bounds: a large calibration sample stays within --calib-memory (or is exit 2 before it is
read), and random inputs are never made larger than a fixed size.

Every CLI run here is a subprocess under an address-space limit a few GB above an idle run's, so that
a regression fails the test instead of exhausting the machine; its peak RSS is the child's own
ru_maxrss (os.wait4), not the test process's.
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ROOT, SAMPLES
from onnx import TensorProto, helper, numpy_helper

from quantcli.calibration.collect import float_tensors
from quantcli.calibration.memory import tensor_bytes
from quantcli.preprocess import preprocess

MiB = 2**20
HEADROOM = 3 * 2**30  # address space allowed above an idle run's


def _run(args: list[str], cwd: Path, limit: int | None = None) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak RSS in bytes) of `python args` under RLIMIT_AS `limit`."""
    limit = limit or _address_space_limit()

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out, err = cwd / ".stdout", cwd / ".stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdout=o,
            stderr=e,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
            preexec_fn=cap,
        )
        timer = threading.Timer(120, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    texts = out.read_text(), err.read_text()
    out.unlink()
    err.unlink()
    return proc.returncode, *texts, usage.ru_maxrss * 1024


def quantcli(*args: object, cwd: Path, limit: int | None = None) -> tuple[int, str, str, int]:
    return _run(["-m", "quantcli.cli", *map(str, args)], cwd, limit)


@functools.cache
def _idle() -> tuple[int, int]:
    """(VmPeak, peak RSS) of a small run that loads onnxruntime, which reserves virtual memory for
    its threads and allocators (`--help` does not import it)."""
    script = (
        "import sys; from quantcli.cli import main; import atexit; "
        "atexit.register(lambda: print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0], "
        "file=sys.stderr)); sys.argv = ['quantcli', 'compare', sys.argv[1], sys.argv[1], '--samples', '1']; main()"
    )
    model = SAMPLES / "digits_cnn.onnx"
    code, _, err, rss = _run(["-c", script, str(model)], ROOT, limit=resource.RLIM_INFINITY)
    assert code == 0, err
    return int(err.strip().splitlines()[-1].split()[1]) * 1024, rss


def _idle_rss() -> int:
    return _idle()[1]


def _address_space_limit() -> int:
    return _idle()[0] + HEADROOM


def conv_model(path: Path, layers: int = 2, channels: int = 4, tail: int = 0) -> None:
    """A tiny Conv/Relu chain with free batch and spatial axes, then `tail` cheap elementwise ops: a
    few hundred bytes of weights, whose activations are as large as the sample makes them."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, c_in, 3, 3)) * 0.3).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev, c_in = f"r{i}", channels
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    for i in range(tail):
        op, args = ("Mul", [prev, "half"]) if i % 2 == 0 else ("Relu", [prev])
        nodes.append(helper.make_node(op, args, [f"t{i}"], name=f"tail{i}"))
        prev = f"t{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["y"], name="gap"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def write_npz(path: Path, arrays: dict[str, tuple[int, ...]]) -> None:
    """A compressed .npz of float32 arrays of these shapes, mostly zeros, written in chunks: a
    file of a few hundred KB that inflates to the arrays' full size, never held in memory here."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, shape in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                header = {"descr": "<f4", "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(f, header)
                chunk = np.zeros(1 << 20, np.float32)
                chunk[::65536] = 1.5
                chunk[5] = -2.0
                left = int(np.prod(shape))
                while left:
                    n = min(left, chunk.size)
                    f.write(chunk[:n].tobytes())
                    left -= n


@pytest.fixture
def big_sample(tmp_path: Path) -> tuple[Path, Path]:
    """The conv model and one 27 MiB sample (36 MiB per activation)."""
    conv_model(tmp_path / "model.onnx")
    (tmp_path / "calib").mkdir()
    write_npz(tmp_path / "calib" / "s0.npz", {"x": (1, 3, 1536, 1536)})
    return tmp_path / "model.onnx", tmp_path / "calib"


def test_calib_memory_bounds_peak_rss_of_a_large_sample(tmp_path: Path) -> None:
    """A 27 MiB input and eight 36 MiB activations (315 MiB per sample): with an 80 MiB budget,
    two tensors per run, peak RSS stays far below the run that exposes them all at once (which
    the first run always did, whatever the budget); the ranges, so the output, are the same.
    Activations over 32 MiB, so that glibc maps each one apart and unmaps it when freed (its
    dynamic mmap threshold stops at 32 MiB): the peak then follows what is live, not how the heap
    fragments."""
    conv_model(tmp_path / "model.onnx", layers=1, tail=6)
    (tmp_path / "calib").mkdir()
    write_npz(tmp_path / "calib" / "s0.npz", {"x": (1, 3, 1536, 1536)})
    peaks, outputs = {}, {}
    for budget in (1024, 80):
        output = tmp_path / f"q{budget}.onnx"
        code, _, err, peaks[budget] = quantcli(
            "convert",
            tmp_path / "model.onnx",
            "--calib",
            tmp_path / "calib",
            "-o",
            output,
            "--calib-memory",
            budget,
            "--calib-method",
            "minmax",
            "--quiet",
            "--no-check-latency",
            cwd=tmp_path,
        )  # fmt: skip: calibration's peak alone (the latency check runs whole models after it)
        assert code == 0, err
        onnx.checker.check_model(str(output), full_check=True)
        outputs[budget] = output.read_bytes()
    exposed = 27 + 8 * 36
    saved = (peaks[1024] - peaks[80]) / MiB
    assert saved >= 0.5 * (exposed - 80), {b: p / MiB for b, p in peaks.items()}
    assert outputs[80] == outputs[1024]


@pytest.mark.parametrize(
    ("budget", "wording"),
    [
        (
            16,
            r"one sample's inputs take 27\.0 MiB \(x float32 \[1, 3, 1536, 1536\]\), more than the 16\.0 MiB",
        ),
        (32, r"tensor '(c|r)[01]' would take 36\.0 MiB for this sample .* more than the 32\.0 MiB"),
    ],
    ids=["inputs", "tensor"],
)
def test_a_sample_that_cannot_fit_is_exit_2_before_it_is_read(big_sample, tmp_path, budget, wording) -> None:
    model, calib = big_sample
    code, out, err, peak = quantcli(
        "convert", model, "--calib", calib, "-o", tmp_path / "q.onnx", "--calib-memory", budget, cwd=tmp_path
    )
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and str(calib / "s0.npz") in err, err
    assert re.search(wording, err), err
    assert "--calib-memory 36 or more" in err
    assert peak < _idle_rss() + 20 * MiB, peak / MiB  # the 27 MiB sample was never read
    assert not (tmp_path / "q.onnx").exists()


def test_a_zip_bomb_sample_is_measured_not_inflated(tmp_path: Path) -> None:
    """A ~1 MB .npz holding 384 MiB of float32, in a per-file and in a batched layout: exit 2 with
    the default budget, with the sample's figures, in the memory of an idle run."""
    conv_model(tmp_path / "model.onnx")
    per_file, batched = tmp_path / "calib", tmp_path / "batched"
    per_file.mkdir()
    batched.mkdir()
    write_npz(per_file / "s0.npz", {"x": (1, 3, 8192, 4096)})
    (batched / "batch.npz").hardlink_to(per_file / "s0.npz")  # one row of 384 MiB
    assert (per_file / "s0.npz").stat().st_size < 4 * MiB
    for calib, label in ((per_file, "s0.npz"), (batched, "batch.npz[0]")):
        code, _, err, peak = quantcli("convert", tmp_path / "model.onnx", "--calib", calib, "-o",
                                      tmp_path / "q.onnx", cwd=tmp_path)  # fmt: skip
        assert code == 2, err
        assert err.count("\n") == 1 and label in err and "384.0 MiB" in err and "256.0 MiB" in err, err
        assert peak < _idle_rss() + 40 * MiB, peak / MiB


def test_sizes_come_from_the_sample_shapes_before_any_run(tmp_path: Path) -> None:
    """Free axes resolved from the sample: shape inference where it can, the inputs' free factor
    where it cannot (a Reshape to a computed shape)."""
    conv_model(tmp_path / "model.onnx", layers=1)
    model = preprocess(onnx.load(tmp_path / "model.onnx")).model
    sizes = tensor_bytes(model, float_tensors(model), {"x": (2, 3, 300, 500)})
    assert sizes == {
        "x": 4 * 2 * 3 * 300 * 500,
        "c0": 4 * 2 * 4 * 300 * 500,
        "r0": 4 * 2 * 4 * 300 * 500,
        "y": 4 * 2 * 4,
    }
    opaque = onnx.parser.parse_model(
        textwrap.dedent("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, H, W] x, int64[4] s) => (float[M] y) {
            r = Reshape(x, s)
            y = Relu(r)
        }
        """)
    )
    sizes = tensor_bytes(opaque, float_tensors(opaque), {"x": (1, 3, 100, 100), "s": (4,)})
    assert sizes["r"] >= sizes["x"] and sizes["y"] >= sizes["x"]  # not taken as 1 element each


def huge_model(path: Path, dims: list) -> None:  # noqa: ANN001
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_random_inputs_of_a_huge_declared_shape_are_exit_2(tmp_path: Path) -> None:
    model = tmp_path / "huge.onnx"
    huge_model(model, [1, 3, 100000, 100000])
    runs = {
        "compare": ("compare", model, model),
        "compare-json": ("compare", model, model, "--json", "--per-layer"),
        "convert": ("convert", model, "--mode", "fp16", "-o", tmp_path / "q.onnx", "--check-latency"),
    }
    for what, args in runs.items():
        code, out, err, peak = quantcli(*args, cwd=tmp_path)
        assert code == 2, (what, err)
        line = json.loads(out)["error"]["message"] if what == "compare-json" else err.strip()
        assert "\n" not in line and "Traceback" not in err
        assert str(model) in line and "input 'x'" in line and "[1, 3, 100000, 100000]" in line
        assert "111.76 GiB" in line and ("--data DIR" in line if what != "convert" else "--eval DIR" in line)
        assert peak < _idle_rss() + 64 * MiB, (what, peak / MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.onnx"]


def test_random_inputs_of_symbolic_dims_still_run(tmp_path: Path) -> None:
    model = tmp_path / "sym.onnx"
    huge_model(model, ["N", 3, "H", "W"])
    code, out, err, _ = quantcli("compare", model, model, "--json", cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out)["data"]["source"] == "random"


def test_guessed_sizes_are_measured_not_refused() -> None:
    """A Slice whose ends are a graph input has no inferable shape: its size is guessed as large as
    the input, and with the guesses over the budget it is measured (tiny) instead of refused, so
    the run is the same one pass with every tensor exposed as before."""
    from quantcli.calibration.collect import CalibrationConfig, collect_ranges
    from quantcli.calibration.ranges import CalibMethod

    model = onnx.parser.parse_model(
        textwrap.dedent("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 3, H, W] x, int64[4] ends) => (float[A, B, C, D] y) {
            zero = Constant <value = int64[4] {0, 0, 0, 0}> ()
            s = Slice(x, zero, ends)
            y = Relu(s)
        }
        """)
    )
    model = preprocess(model).model
    rng = np.random.default_rng(0)
    sample = {"x": rng.standard_normal((1, 3, 256, 256), dtype=np.float32), "ends": np.array([1, 3, 2, 2])}
    x_bytes = sample["x"].nbytes
    estimated = tensor_bytes(model, ["x", "s", "y"], {k: v.shape for k, v in sample.items()})
    assert estimated == {"x": x_bytes, "s": x_bytes, "y": x_bytes}
    passes: list[int] = []
    budget = x_bytes + 4096  # x and the measured slice fit; x and the two guesses would not
    config = CalibrationConfig(method=CalibMethod.MINMAX, memory_budget_bytes=budget)
    ranges = collect_ranges(model, lambda: iter([sample]), config, progress=lambda g, n, k: passes.append(n))
    assert passes == [1]
    assert ranges.ranges["y"] == (0.0, float(np.maximum(sample["x"][:1, :3, :2, :2], 0).max()))


def test_a_sample_too_large_to_allocate_is_exit_2_outside_calibration(tmp_path: Path) -> None:
    """compare --data has no budget: a sample whose header claims 40 GiB fails to allocate, and
    that is bad input (exit 2, its figures), not a quantcli bug (exit 70)."""
    model = tmp_path / "m.onnx"
    huge_model(model, ["N", 3, "H", "W"])
    (tmp_path / "data").mkdir()
    with zipfile.ZipFile(tmp_path / "data" / "s0.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f4", "fortran_order": False, "shape": (1, 3, 60000, 60000)}
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(4096))
    code, _, err, peak = quantcli("compare", model, model, "--data", tmp_path / "data", cwd=tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and "s0.npz" in err and "40.23 GiB" in err and "[1, 3, 60000, 60000]" in err
    assert peak < _idle_rss() + 64 * MiB, peak / MiB


def test_a_model_written_a_tensor_at_a_time_is_the_serialised_bytes(converted) -> None:  # noqa: ANN001
    """model_io.write_serialized (big models: no whole serialised copy in memory) writes exactly
    SerializeToString(deterministic=True): fields in number order, graph and initializers included."""
    import io

    from onnx import helper

    from quantcli.model_io import model_size, write_serialized

    models = [onnx.load(p) for p in sorted(SAMPLES.glob("*.onnx"))] + [
        onnx.load(c.output) for c in converted.values()
    ]
    odd = onnx.load(SAMPLES / "digits_mlp.onnx")
    odd.doc_string, odd.domain, odd.model_version = "doc", "ai.test", 7
    odd.graph.doc_string = "graph doc"
    helper.set_model_props(odd, {"a": "1", "b": "2"})
    odd.functions.add().CopyFrom(
        helper.make_function(
            "local",
            "f",
            ["x"],
            ["y"],
            [helper.make_node("Relu", ["x"], ["y"])],
            [helper.make_opsetid("", 17)],
        )
    )
    for model in [*models, odd]:
        buf = io.BytesIO()
        written = write_serialized(model, buf)
        expected = model.SerializeToString(deterministic=True)
        assert buf.getvalue() == expected and written == len(expected)
        assert (
            0 <= model_size(model) - len(expected) <= 64 * len(model.graph.initializer) + 64
        )  # a close upper bound
