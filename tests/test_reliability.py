"""Interrupted runs, full disks and repeated runs never leave half-written or differing files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from conftest import DATA, ROOT, SAMPLES, sha256

from quantcli.api import ConvertOptions, convert


def test_same_input_gives_byte_identical_output(tmp_path) -> None:
    outputs = []
    for i in range(2):
        out = tmp_path / f"run{i}.onnx"
        convert(
            ConvertOptions(
                model=SAMPLES / "digits_vit.onnx",
                output=out,
                calib=DATA / "digits_vit" / "calib",
                calib_samples=16,
            )
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def _big_model(path: Path) -> None:
    """A model slow enough to calibrate (~20 ms per sample, 400 samples) that a signal lands mid-run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "input"
    for i in range(6):
        inits.append(
            numpy_helper.from_array(rng.standard_normal((1024, 1024), dtype=np.float32) / 32, f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1024])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _start_convert(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    model = tmp_path / "big.onnx"
    _big_model(model)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(400):
        np.savez(calib / f"s{i:03d}.npz", input=rng.standard_normal((64, 1024), dtype=np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quantcli.cli",
            "convert",
            str(model),
            "--calib",
            str(calib),
            "-o",
            str(out_dir / "q.onnx"),
            "--save-plan",
            str(out_dir / "plan.json"),
            "--calib-samples",
            "400",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        # A test run started as a background job of a non-interactive shell (`pytest ... &`, some CI
        # runners) ignores SIGINT, and a child inherits that: quantcli then rightly ignores it too.
        # The child gets the default disposition, as a process started from a terminal has.
        preexec_fn=_default_sigint,
    )
    return proc, model, out_dir


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_cpu(pid: int, seconds: float, timeout: float = 60.0) -> None:
    """Wait until process `pid` has used `seconds` of CPU time (a wall-clock sleep races with a
    fast machine: the conversion once finished within the 4 s the test slept)."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # no procfs: fall back to wall time
        time.sleep(seconds)
        return
    ticks = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return  # the process is gone: the caller's poll() says so
        if (int(fields[11]) + int(fields[12])) / ticks >= seconds:
            return
        time.sleep(0.02)


def _interrupt(tmp_path: Path, sig: int, code: int) -> None:
    proc, model, out_dir = _start_convert(tmp_path)
    before = sha256(model)
    _wait_for_cpu(proc.pid, 2.0)  # past the imports and the model load: calibrating
    assert proc.poll() is None, "the conversion finished before the signal: make the workload larger"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert list(out_dir.iterdir()) == []  # no output, no temporary left
    assert sha256(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "calib", "out"]


def test_sigint_exits_130_and_leaves_nothing(tmp_path) -> None:
    _interrupt(tmp_path, signal.SIGINT, 130)


def test_sigterm_exits_143_and_leaves_nothing(tmp_path) -> None:
    _interrupt(tmp_path, signal.SIGTERM, 143)


FULL_DISK = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
from quantcli.cli import main
sys.argv = ["quantcli", "convert", sys.argv[1], "--calib", sys.argv[2], "--calib-samples", "8", "-o", sys.argv[3]]
main()
"""


def test_full_disk_is_a_clear_error_and_leaves_nothing(tmp_path) -> None:
    out = tmp_path / "out" / "q.onnx"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(FULL_DISK),
            str(SAMPLES / "digits_cnn.onnx"),
            str(DATA / "digits_cnn" / "calib"),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip().count("\n") == 0
        and "cannot write output" in proc.stderr
        and "q.onnx" in proc.stderr
    )
    assert list(out.parent.iterdir()) == []


def test_kill_9_mid_write_keeps_the_previous_output(tmp_path) -> None:
    """A killed run never leaves a partial file under the final name (the write is a rename)."""
    out = tmp_path / "q.onnx"
    convert(
        ConvertOptions(
            model=SAMPLES / "digits_mlp.onnx",
            output=out,
            calib=DATA / "digits_mlp" / "calib",
            calib_samples=8,
        )
    )
    previous = sha256(out)
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from quantcli import model_io
        def die(src, dst):
            os.kill(os.getpid(), 9)  # killed after the temporary is complete, before the rename
        model_io.os.replace = die
        model_io.write_bytes_atomic(Path(sys.argv[1]), b"new bytes" * 1000)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == -9
    assert sha256(out) == previous


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Atomic writes go through a private temporary file (mode 0600); the result must not stay so."""
    from conftest import quantcli

    run = quantcli(
        "convert", SAMPLES / "digits_mlp.onnx", "--mode", "fp16", "-o", tmp_path / "m.onnx",
        "--save-plan", tmp_path / "plan.json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("m.onnx", "plan.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
