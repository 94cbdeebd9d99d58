"""Where outputs go: devices, FIFOs and directories refused before any work, temporary names that
fit beside any legal name, two outputs at one path, one-line errors whatever a path holds,
interruptions at any moment, and inspect never touching external data outside the model's folder."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import DATA, ROOT, SAMPLES, sha256
from onnx import TensorProto, helper, numpy_helper

from quantcli.cli import main
from quantcli.errors import UsageError
from quantcli.model_io import check_outputs, data_prefix, external_data_file, staged_model
from quantcli.outputs import name_max, signals_deferred

MLP = SAMPLES / "digits_mlp.onnx"
EVAL = DATA / "digits_mlp" / "eval"


class _Deadline(Exception):
    pass


def _run(*args: object, env: dict[str, str] | None = None, seconds: float = 30) -> tuple[int, str, str]:
    """The CLI in this process (fast: no second import of onnx); exit code, stdout, stderr. A run
    that blocks (a FIFO opened without a writer or reader) fails the test after `seconds`."""

    def expire(signum: int, frame: object) -> None:  # noqa: ARG001
        raise _Deadline(f"quantcli {' '.join(map(str, args))} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(result.exception, _Deadline):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


# ---------------------------------------------------------------- destinations that are not files


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo")
    return d / "fifo"


def _directory(d: Path) -> Path:
    (d / "folder").mkdir()
    return d / "folder"


def _socket(d: Path) -> Path:
    path = d / "sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
    except OSError:  # tmp_path longer than a socket address takes
        pytest.skip("socket path too long here")
    finally:
        s.close()
    return path


def _link_to(target: str):  # noqa: ANN202
    def make(d: Path) -> Path:
        if not os.path.exists(target) or not stat.S_ISCHR(os.stat(target).st_mode):
            pytest.skip(f"no {target} device here")  # (a broken machine's /dev/null can be a plain file)
        (d / "link").symlink_to(target)
        return d / "link"

    return make


def _link_to_fifo(d: Path) -> Path:
    (d / "link").symlink_to(_fifo(d))
    return d / "link"


# A device through a link in tmp_path: were the refusal ever to fail, the rename would replace the
# link, never the device itself (tests may run as root). The devices by their own names go through
# check_outputs below, which writes nothing either way; /dev/zero and /dev/full, which a read never
# ends, run in a separate process with a memory limit (test_never_ending_devices_...).
DESTINATIONS = {
    "fifo": (_fifo, "FIFO"),
    "directory": (_directory, "is a directory"),
    "socket": (_socket, "socket"),
    "link to /dev/null": (_link_to("/dev/null"), "character device"),
    "link to a fifo": (_link_to_fifo, "FIFO"),
}


def _commands(d: Path, bad: Path) -> dict[str, tuple[list[object], dict[str, str] | None]]:
    """Every file option of every command, given `bad` (the others are fine paths)."""
    return {
        "convert -o": (["convert", MLP, "--mode", "fp16", "-o", bad], None),
        "convert --save-plan": (
            ["convert", MLP, "--mode", "fp16", "-o", d / "q.onnx", "--save-plan", bad],
            None,
        ),
        "compare --junit": (["compare", MLP, MLP, "--samples", 2, "--junit", bad], None),
        "compare --markdown": (["compare", MLP, MLP, "--samples", 2, "--markdown", bad], None),
        "compare --markdown -": (
            ["compare", MLP, MLP, "--samples", 2, "--markdown", "-"],
            {"GITHUB_STEP_SUMMARY": str(bad)},
        ),
    }


@pytest.mark.parametrize("kind", DESTINATIONS)
def test_every_output_option_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    make, needle = DESTINATIONS[kind]
    bad = make(tmp_path)
    before = {p.name: os.lstat(p).st_mode for p in tmp_path.iterdir()}
    for command, (args, env) in _commands(tmp_path, bad).items():
        t0 = time.perf_counter()
        code, _, stderr = _run(*args, env=env)
        assert time.perf_counter() - t0 < 5, command
        _one_line_error(code, stderr, bad.name, needle)
        # Nothing replaced, nothing created (no temporary, no output), the FIFO never opened.
        assert {p.name: os.lstat(p).st_mode for p in tmp_path.iterdir()} == before, command


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev"])
def test_devices_by_their_own_names_are_refused(device: str) -> None:
    if not os.path.lexists(device) or stat.S_ISREG(os.stat(device).st_mode):
        pytest.skip(f"no {device} device here")  # (a broken machine's /dev/null can be a plain file)
    for outputs in ({"-o": device}, {"-o": None, "--save-plan": device}, {"--junit": device}):
        with pytest.raises(UsageError, match="not a regular file|is a directory"):
            check_outputs(outputs, [MLP])


def test_a_device_output_is_refused_before_the_model_is_read(tmp_path: Path) -> None:
    """Fail fast: the output is checked before the (here unreadable) model is loaded."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all" * 100)
    os.mkfifo(tmp_path / "fifo")
    code, _, stderr = _run("convert", junk, "--mode", "fp16", "-o", tmp_path / "fifo")
    _one_line_error(code, stderr, "fifo", "FIFO")
    assert "junk.onnx" not in stderr


def _limit_memory() -> None:
    limit = 3 * 2**30  # a fp16 conversion of the digits MLP runs in 2 GiB of address space
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/full"])
def test_never_ending_devices_are_refused_without_reading_them(tmp_path: Path, device: str) -> None:
    """The issue's run (read /dev/zero forever, 23 GB): a separate process, memory and time bounded."""
    if not os.path.exists(device) or not stat.S_ISCHR(os.stat(device).st_mode):
        pytest.skip(f"no {device} device here")
    (tmp_path / "dev").symlink_to(device)
    for option in ("-o", "--save-plan"):
        args = (
            ["-o", tmp_path / "dev"]
            if option == "-o"
            else ["-o", tmp_path / "q.onnx", "--save-plan", tmp_path / "dev"]
        )
        proc = subprocess.run(
            [sys.executable, "-m", "quantcli.cli", "convert", MLP, "--mode", "fp16", *map(str, args)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        _one_line_error(proc.returncode, proc.stderr, "dev", "character device")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["dev"] and (tmp_path / "dev").is_symlink()


def test_a_path_ending_in_a_slash_is_a_directory_not_a_file(tmp_path: Path) -> None:
    fp16 = ["convert", MLP, "--mode", "fp16"]
    for args in (
        [*fp16, "-o", f"{tmp_path}/new/"],
        [*fp16, "-o", tmp_path / "q.onnx", "--save-plan", f"{tmp_path}/plan/"],
        ["compare", MLP, MLP, "--junit", f"{tmp_path}/j/"],
        ["compare", MLP, MLP, "--markdown", f"{tmp_path}/m/"],
    ):
        code, _, stderr = _run(*args)
        _one_line_error(code, stderr, "names a directory")
    assert list(tmp_path.iterdir()) == []


def test_no_output_replaces_the_input_models_external_data(tmp_path: Path) -> None:
    model = _matmul_model(0)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    before = sha256(tmp_path / "m.data")
    for option in ("-o", "--save-plan"):
        args = (
            ["-o", tmp_path / "m.data"]
            if option == "-o"
            else ["-o", tmp_path / "q.onnx", "--save-plan", tmp_path / "m.data"]
        )
        code, _, stderr = _run("convert", tmp_path / "m.onnx", "--mode", "fp16", *args)
        _one_line_error(code, stderr, "m.data", "is the input")
    assert sha256(tmp_path / "m.data") == before


def test_a_link_to_a_regular_file_is_written_through(tmp_path: Path) -> None:
    """The file a link leads to is replaced; the link stays a link (as /dev/stdout must)."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "q.onnx"
    target.write_bytes(b"old contents, not a model")  # never read: no parse error
    link = tmp_path / "q.onnx"
    link.symlink_to(target)
    code, _, stderr = _run("convert", MLP, "--mode", "fp16", "-o", link, "--quiet")
    assert code == 0, stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    onnx.checker.check_model(str(target), full_check=True)
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["q.onnx"]


# ---------------------------------------------------------------- names as long as the system allows


def _long_name(d: Path, suffix: str, length: int | None = None) -> str:
    n = (length or name_max(d)) - len(suffix)
    return "n" * n + suffix


def test_longest_legal_names_for_every_output(tmp_path: Path) -> None:
    model = _long_name(tmp_path, ".onnx", 250)
    plan = _long_name(tmp_path, ".json")  # NAME_MAX bytes exactly
    code, _, stderr = _run(
        "convert", MLP, "--mode", "fp16", "-o", tmp_path / model, "--save-plan", tmp_path / plan
    )
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([model, plan])
    onnx.checker.check_model(str(tmp_path / model), full_check=True)
    ort.InferenceSession(str(tmp_path / model), providers=["CPUExecutionProvider"])
    json.loads((tmp_path / plan).read_text())

    junit, markdown = _long_name(tmp_path, ".xml"), _long_name(tmp_path, ".md", 251)
    code, _, stderr = _run(
        "compare",
        MLP,
        tmp_path / model,
        "--samples",
        2,
        "--junit",
        tmp_path / junit,
        "--markdown",
        tmp_path / markdown,
    )
    assert code == 0, stderr
    assert (tmp_path / junit).read_text().startswith("<?xml") and (tmp_path / markdown).stat().st_size > 0


def test_a_name_too_long_for_the_file_system_is_refused_first(tmp_path: Path) -> None:
    name = _long_name(tmp_path, ".onnx", name_max(tmp_path) + 1)
    code, _, stderr = _run("convert", MLP, "--mode", "fp16", "-o", tmp_path / name)
    _one_line_error(code, stderr, "file name is", "bytes long")
    assert list(tmp_path.iterdir()) == []


def _matmul_model(seed: int) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("length", [200, 240, None])
def test_external_data_names_fit_beside_a_long_model_name(tmp_path: Path, length: int | None) -> None:
    """The model's external data file (`<name>.<hash>.data`) fits too, and a second write of the
    same output removes the first one's data file (found by name: the old model is not read)."""
    final = tmp_path / _long_name(tmp_path, ".onnx", length)
    for seed in (0, 1):
        with staged_model(_matmul_model(seed), final, external=True) as staged:
            pass
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted([final.name, staged.data_name]), names
        assert all(len(os.fsencode(n)) <= name_max(tmp_path) for n in names)
        assert staged.data_name.startswith(data_prefix(final))
        onnx.checker.check_model(str(final), full_check=True)
        session = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"])
        x = np.ones((1, 64), np.float32)
        expected = x @ numpy_helper.to_array(_matmul_model(seed).graph.initializer[0])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5)


# ---------------------------------------------------------------- two outputs, or an output and an input, at one path


def _same_path_cases(d: Path) -> dict[str, tuple[list[object], list[str]]]:
    (d / "sub").mkdir()
    (d / "exists.onnx").write_bytes(b"x")
    (d / "alias.onnx").symlink_to(d / "exists.onnx")
    os.link(d / "exists.onnx", d / "hard.onnx")
    model = d / "m.onnx"
    model.write_bytes(MLP.read_bytes())
    (d / "model_link.onnx").symlink_to(model)
    os.link(model, d / "model_hard.onnx")
    fp16 = ["convert", MLP, "--mode", "fp16"]
    return {
        "plan is -o": ([*fp16, "-o", d / "p.onnx", "--save-plan", d / "p.onnx"], ["-o and --save-plan"]),
        "plan is -o, spelt otherwise": (
            [*fp16, "-o", d / "p.onnx", "--save-plan", d / "sub" / ".." / "p.onnx"],
            ["-o and --save-plan"],
        ),
        "plan is a link to -o": (
            [*fp16, "-o", d / "exists.onnx", "--save-plan", d / "alias.onnx"],
            ["-o and --save-plan"],
        ),
        "plan is a hard link of -o": (
            [*fp16, "-o", d / "exists.onnx", "--save-plan", d / "hard.onnx"],
            ["-o and --save-plan"],
        ),
        "-o is the input via a link": (
            ["convert", model, "--mode", "fp16", "-o", d / "model_link.onnx"],
            ["is the input"],
        ),
        "-o is the input via a hard link": (
            ["convert", model, "--mode", "fp16", "-o", d / "model_hard.onnx"],
            ["is the input"],
        ),
        "-o is the input, spelt otherwise": (
            ["convert", model, "--mode", "fp16", "-o", d / "sub" / ".." / "m.onnx"],
            ["is the input"],
        ),
        "plan is the input": (
            ["convert", model, "--mode", "fp16", "-o", d / "q.onnx", "--save-plan", model],
            ["is the input"],
        ),
        "junit is markdown": (
            [
                "compare",
                MLP,
                MLP,
                "--samples",
                2,
                "--junit",
                d / "r.txt",
                "--markdown",
                d / "sub" / ".." / "r.txt",
            ],
            ["--markdown and --junit"],
        ),
        "junit is the candidate": (
            ["compare", MLP, model, "--samples", 2, "--junit", d / "model_hard.onnx"],
            ["is the input"],
        ),
    }


def test_two_outputs_or_an_output_and_an_input_at_one_path(tmp_path: Path) -> None:
    cases = _same_path_cases(tmp_path)
    before = {p.name: sha256(p) for p in tmp_path.iterdir() if p.is_file()}
    for case, (args, needles) in cases.items():
        code, _, stderr = _run(*args)
        _one_line_error(code, stderr, *needles)
        assert "output path is the input model" not in stderr or "is the input" in needles, case
        assert {p.name: sha256(p) for p in tmp_path.iterdir() if p.is_file()} == before, case


# ---------------------------------------------------------------- paths with control characters


def test_errors_stay_one_line_whatever_a_path_holds(tmp_path: Path) -> None:
    odd = "a\nb\r\x1b[31mc\u2028d"
    escaped = "a\\nb\\r\\x1b[31mc\\u2028d"
    (tmp_path / f"{odd}.onnx").write_bytes(b"junk that is not a model")
    (tmp_path / f"{odd}-dir").mkdir()
    missing = tmp_path / f"{odd}-missing" / "q.onnx"
    fp16 = ["convert", MLP, "--mode", "fp16"]
    runs = [
        (
            ["convert", tmp_path / f"{odd}.onnx", "--mode", "fp16", "-o", tmp_path / "q.onnx"],
            "not an ONNX model",
        ),
        (
            ["convert", tmp_path / f"{odd}-none.onnx", "--mode", "fp16", "-o", tmp_path / "q.onnx"],
            "no such file",
        ),
        ([*fp16, "-o", missing], "does not exist"),
        ([*fp16, "-o", tmp_path / f"{odd}-dir"], "is a directory"),
        ([*fp16, "-o", tmp_path / "q.onnx", "--save-plan", missing], "does not exist"),
        (["inspect", tmp_path / f"{odd}.onnx"], "not an ONNX model"),
        (["compare", MLP, tmp_path / f"{odd}.onnx"], "not an ONNX model"),
        (["compare", MLP, MLP, "--junit", missing], "does not exist"),
    ]
    for args, needle in runs:
        code, _, stderr = _run(*args)
        _one_line_error(code, stderr, escaped, needle)
        assert "\x1b" not in stderr


def test_json_error_keeps_the_path_exactly(tmp_path: Path) -> None:
    missing = tmp_path / "a\nb.onnx"
    code, stdout, stderr = _run("inspect", missing, "--json")
    _one_line_error(code, stderr, "a\\nb.onnx")
    assert str(missing) in json.loads(stdout)["error"]["message"]


# ---------------------------------------------------------------- signals at any moment


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs procfs to time the signal")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("cpu", [0.15, 0.5, 1.0, 1.6])
def test_a_signal_at_any_moment_exits_cleanly(tmp_path: Path, sig: int, code: int, cpu: float) -> None:
    """From the first import on (0.15 s of CPU is past the interpreter's own start-up) through the
    conversion and the verification: 130/143, one line, nothing left behind."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantcli.cli", "convert", MLP, "--mode", "fp16", "--eval", EVAL,
         "-o", out / "q.onnx", "--save-plan", out / "plan.json", "--check-latency"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if _cpu_seconds(proc.pid) >= cpu:
                break
        except (OSError, IndexError):
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("finished before the signal")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:  # the signal came after the outcome was decided: a complete result
        assert sorted(p.name for p in out.iterdir()) == ["plan.json", "q.onnx"]
        return
    assert proc.returncode == code, stderr
    assert stderr.count("\n") == 1 and "interrupted" in stderr and "Traceback" not in stderr
    names = sorted(p.name for p in out.iterdir())
    assert names in ([], ["plan.json", "q.onnx"]), names  # all outputs, or none: never one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_signals_wait_for_the_outputs_to_be_in_place() -> None:
    """A signal inside the commit of a group of renames is delivered after it, not in the middle."""
    # Python's own SIGINT handler, whatever this process inherited (a shell's background job
    # starts with SIGINT ignored, and then no KeyboardInterrupt would ever come)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                done.append("renames")
            time.sleep(1)  # the signal is delivered here, at the latest
    finally:
        signal.signal(signal.SIGINT, previous)
    assert done == ["renames"]


# ---------------------------------------------------------------- inspect and external data outside the model's folder


def _external_model(d: Path, location: str) -> Path:
    model = _matmul_model(0)
    t = model.graph.initializer[0]
    size = len(t.raw_data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        t.external_data.add(key=key, value=value)
    d.mkdir(exist_ok=True)
    onnx.save(model, d / "m.onnx")
    return d / "m.onnx"


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 16411)  # a size to look for in the report
    return secret


LOCATIONS = {
    "parent": lambda t: ("../secret.bin", "outside the model's directory"),
    "absolute": lambda t: (str(t / "secret.bin"), "absolute"),
    "link out": lambda t: (_link(t / "model" / "w.bin", t / "secret.bin"), "symbolic link out"),
    "link up": lambda t: (
        _link(t / "model" / "w.bin", Path("../secret.bin")),
        "outside the model's directory",
    ),
    "link to /dev/zero": lambda t: (_link(t / "model" / "w.bin", Path("/dev/zero")), "symbolic link out"),
    "dir link out": lambda t: (_link(t / "model" / "d", t) + "/secret.bin", "symbolic link out"),
    "fifo": lambda t: (_fifo_in(t / "model"), "not a regular file"),
    "absolute fifo": lambda t: (str(_fifo(t)), "absolute"),
}


def _link(link: Path, target: Path) -> str:
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(target)
    return link.name


def _fifo_in(d: Path) -> str:
    d.mkdir(exist_ok=True)
    os.mkfifo(d / "w.bin")
    return "w.bin"


@pytest.mark.parametrize("case", LOCATIONS)
def test_inspect_never_touches_external_data_outside_the_model(tmp_path: Path, case: str) -> None:
    _outside(tmp_path)
    location, needle = LOCATIONS[case](tmp_path)
    model = _external_model(tmp_path / "model", location)
    for extra in ([], ["--tensors"], ["--no-ort"]):
        code, stdout, stderr = _run("inspect", model, "--json", *extra)
        assert code == 0, stderr
        report = json.loads(stdout)
        (entry,) = report["file"]["external_data"]
        assert entry["bytes"] is None and needle in entry["problem"], entry
        assert "16,411" not in stdout and "16411" not in stdout
        findings = [f for f in report["findings"] if f["code"] == "external-data"]
        assert len(findings) == 1 and findings[0]["severity"] == "error" and needle in findings[0]["message"]
    code, stdout, _ = _run("inspect", model)
    assert code == 0 and "NOT READ" in stdout and "16,411" not in stdout
    code, _, stderr = _run("convert", model, "--mode", "fp16", "-o", tmp_path / "q.onnx")
    _one_line_error(code, stderr, "m.onnx", needle)


def test_external_data_inside_the_model_folder_is_still_read(tmp_path: Path) -> None:
    """The same check lets a data file in a subfolder, or reached by a link that stays inside, through."""
    d = tmp_path / "model"
    (d / "weights").mkdir(parents=True)
    data = numpy_helper.to_array(_matmul_model(0).graph.initializer[0]).tobytes()
    (d / "weights" / "w.bin").write_bytes(data)
    (d / "alias.bin").symlink_to("weights/w.bin")
    assert external_data_file(d, "weights/w.bin") == (d / "weights" / "w.bin").resolve()
    assert external_data_file(d, "alias.bin") == (d / "weights" / "w.bin").resolve()
    assert external_data_file(d, "weights/../weights/w.bin") == (d / "weights" / "w.bin").resolve()
    model = _external_model(d, "weights/w.bin")
    code, stdout, stderr = _run("inspect", model, "--json")
    assert code == 0, stderr
    (entry,) = json.loads(stdout)["file"]["external_data"]
    assert entry == {"location": "weights/w.bin", "bytes": len(data), "problem": None}
    code, _, stderr = _run("convert", model, "--mode", "fp16", "-o", tmp_path / "q.onnx", "--quiet")
    assert code == 0, stderr
    assert stat.S_ISREG(os.stat(tmp_path / "q.onnx").st_mode)


def test_inputs_that_are_not_regular_files_are_refused(tmp_path: Path) -> None:
    """A model, plan or labels file that is a device or a FIFO would never end a read (/dev/zero)
    or block forever (a FIFO with no writer): exit 2 naming what it is, at once."""
    from conftest import quantcli

    cnn = SAMPLES / "digits_cnn.onnx"
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    evals = tmp_path / "eval"
    evals.mkdir()
    for p in sorted((DATA / "digits_cnn" / "eval").glob("*.npz"))[:3]:
        (evals / p.name).write_bytes(p.read_bytes())
    os.mkfifo(evals / "labels.npy")
    cases = [
        (["convert", "/dev/zero", "-o", tmp_path / "a.onnx"], "character device"),
        (["inspect", "/dev/zero"], "character device"),
        (["convert", cnn, "--plan", "/dev/zero", "-o", tmp_path / "b.onnx"], "character device"),
        (["convert", cnn, "--plan", fifo, "-o", tmp_path / "c.onnx"], "FIFO"),
        (["convert", cnn, "--mode", "dynamic", "--eval", evals, "-o", tmp_path / "d.onnx"], "labels.npy"),
    ]
    for args, needle in cases:
        proc = quantcli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "plan.json"]
