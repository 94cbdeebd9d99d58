"""The CI contract and the Python API: usage errors as one line (and JSON with --json), options
that would change nothing refused, ConvertOptions taking what the CLI takes, samples in memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DATA, SAMPLES, quantcli, sha256
from test_cli import assert_one_line_error

from quantcli.api import ConvertOptions, convert
from quantcli.calibration.collect import CalibrationConfig
from quantcli.calibration.ranges import CalibMethod
from quantcli.errors import BadDataError, UsageError
from quantcli.quantize.params import QType

CNN = SAMPLES / "digits_cnn.onnx"
CALIB = DATA / "digits_cnn" / "calib"
N = 20  # samples: 16 calibrate, the last 4 are held out for the report


def _samples() -> list[dict[str, np.ndarray]]:
    return [dict(np.load(p)) for p in sorted(CALIB.glob("*.npz"))[:N]]


def _calib_dir(tmp_path: Path) -> Path:
    d = tmp_path / "calib"
    d.mkdir()
    for p in sorted(CALIB.glob("*.npz"))[:N]:
        (d / p.name).write_bytes(p.read_bytes())
    return d


# --- usage errors: one line, exit 2, and one JSON object with --json --------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["convert", "m.onnx", "--json"], "Missing option '-o'"),
        (["convert", str(CNN), "-o", "q.onnx", "--mode", "foo", "--json"], "--mode"),
        (["compare", str(CNN), "--bogus", "--json"], "--bogus"),
        (["inspect", "--json"], "Missing argument"),
        (["frobnicate", "--json"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_and_json(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = quantcli(*args, cwd=tmp_path)
    assert_one_line_error(proc, 2, needle, "--help")
    assert "Usage:" not in proc.stderr and "Try " not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema_version"] == 1 and data["exit_code"] == 2
    assert data["error"]["code"] == "usage" and needle in data["error"]["message"]
    assert list(tmp_path.iterdir()) == []


def test_usage_error_without_json_prints_nothing_on_stdout(tmp_path: Path) -> None:
    proc = quantcli("convert", CNN, "-o", tmp_path / "q.onnx", "--calib-method", "kl", cwd=tmp_path)
    assert_one_line_error(proc, 2, "quantcli convert: error:", "--calib-method")
    assert proc.stdout == ""


def test_json_errors_name_their_kind(tmp_path: Path) -> None:
    proc = quantcli("convert", tmp_path / "none.onnx", "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path)
    assert_one_line_error(proc, 2, "none.onnx")
    data = json.loads(proc.stdout)
    assert data["exit_code"] == 2 and data["error"]["code"] == "bad-model"
    proc = quantcli(
        "convert", CNN, "-o", tmp_path / "q.onnx", "--calib", tmp_path / "nodir", "--json", cwd=tmp_path
    )
    assert json.loads(proc.stdout)["error"]["code"] == "bad-data"


# --- options that would change nothing are refused ----------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--per-tensor"], "--per-tensor"),
        (["--reduce-range"], "--reduce-range"),
        (["--calib-method", "entropy"], "--calib-method"),
        (["--weight-calibration", "mse"], "--weight-calibration"),
        (["--block-size", "64"], "--block-size"),
    ],
)
def test_fp16_refuses_options_it_does_not_read(tmp_path: Path, extra: list[str], needle: str) -> None:
    proc = quantcli("convert", CNN, "--mode", "fp16", "-o", tmp_path / "q.onnx", *extra, cwd=tmp_path)
    assert_one_line_error(proc, 2, needle, "--mode fp16")
    assert list(tmp_path.iterdir()) == []


def test_percentile_needs_the_percentile_method(tmp_path: Path) -> None:
    proc = quantcli(
        "convert", CNN, "--calib", CALIB, "-o", tmp_path / "q.onnx", "--percentile", "99.9", cwd=tmp_path
    )
    assert_one_line_error(proc, 2, "--percentile", "mse")


@pytest.fixture(scope="module")
def saved_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("plan")
    out, plan = d / "q.onnx", d / "plan.json"
    # every node INT8 that accuracy allows: the edits below turn INT8 nodes into others
    convert(
        ConvertOptions(model=CNN, output=out, calib=CALIB, calib_samples=16, save_plan=plan, speed_plan=False)
    )
    return out, plan


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--activation-type", "int8"], "--activation-type int8 contradicts the plan"),
        (["--per-tensor"], "--per-tensor contradicts the plan"),
        (["--calib-method", "minmax"], "--calib-method mse"),
        (["--weight-calibration", "mse"], "--weight-calibration minmax"),
        (["--calib-memory", "64"], "shapes a new plan"),
        (["--calib-samples", "8"], "shapes a new plan"),
        (["--block-size", "64"], "the plan"),
    ],
)
def test_replay_refuses_options_the_plan_fixes(
    tmp_path: Path, saved_plan: tuple[Path, Path], extra: list[str], needle: str
) -> None:
    _, plan = saved_plan
    out = tmp_path / "r.onnx"
    proc = quantcli("convert", CNN, "--plan", plan, "--calib", CALIB, "-o", out, *extra, cwd=tmp_path)
    assert_one_line_error(proc, 2, needle)
    assert not out.exists()


def test_replay_accepts_options_that_agree_with_the_plan(
    tmp_path: Path, saved_plan: tuple[Path, Path]
) -> None:
    first, plan = saved_plan
    out = tmp_path / "r.onnx"
    proc = quantcli(
        "convert",
        CNN,
        "--plan",
        plan,
        "-o",
        out,
        "--activation-type",
        "uint8",
        "--calib-method",
        "mse",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert sha256(out) == sha256(first)


def test_a_static_plan_cannot_ask_for_fp16_nodes(tmp_path: Path, saved_plan: tuple[Path, Path]) -> None:
    _, plan = saved_plan
    data = json.loads(plan.read_text())
    conv = next(n for n in data["nodes"] if n["op_type"] == "Conv")
    conv["precision"] = "fp16"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    out = tmp_path / "r.onnx"
    proc = quantcli("convert", CNN, "--plan", edited, "-o", out, cwd=tmp_path)
    assert_one_line_error(proc, 2, conv["name"], "fp16", '"mode": "mixed"')
    assert not out.exists()
    data["mode"] = "mixed"  # the same node in FP16 is what mixed mode writes: honoured
    edited.write_text(json.dumps(data))
    proc = quantcli("convert", CNN, "--plan", edited, "-o", out, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mode"] == "mixed"
    written = onnx.load(out)
    assert any(
        t.data_type == onnx.TensorProto.FLOAT16 for t in written.graph.initializer
    )  # the Conv's weight


# --- the Python API takes what the CLI takes ----------------------------------------------------


def test_options_accept_strings_and_enum_names(tmp_path: Path) -> None:
    options = ConvertOptions(
        model=str(CNN),
        output=str(tmp_path / "q.onnx"),
        calib=str(CALIB),
        activation_type="int8",
        calibration=CalibrationConfig(method="minmax"),
        mode="static",
    )
    assert options.model == CNN and options.calib == CALIB
    dynamic = ConvertOptions(
        model=CNN, output=tmp_path / "q.onnx", mode="dynamic", dynamic_op_types="MatMul, Conv"
    )
    assert dynamic.dynamic_op_types == ("MatMul", "Conv")
    assert options.activation_type is QType.INT8 and options.calibration.method is CalibMethod.MINMAX


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("activation_type", "int4", "--activation-type int4"),
        ("mode", "fp32", "--mode fp32"),
        ("target_cpu", "sparc", "--target-cpu sparc"),
        ("weight_calibration", "kl", "--weight-calibration kl"),
        ("output", 3, "--output"),
        ("calibration", CalibrationConfig(method="kl"), "--calib-method kl"),
    ],
)
def test_options_name_the_option_of_a_wrong_value(
    tmp_path: Path, field: str, value: object, needle: str
) -> None:
    kwargs = {"model": CNN, "output": tmp_path / "q.onnx", "calib": CALIB, field: value}
    with pytest.raises(UsageError, match=needle):
        ConvertOptions(**kwargs)


def test_samples_in_memory_give_the_directory_s_result(tmp_path: Path) -> None:
    """A list, a callable returning a generator and an onnxruntime-style reader are read like the
    same samples in a directory: same split, same plan, same bytes."""
    from_dir = convert(ConvertOptions(model=CNN, output=tmp_path / "d.onnx", calib=_calib_dir(tmp_path)))
    samples = _samples()

    class Reader:  # onnxruntime.quantization.CalibrationDataReader's protocol
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    for name, data in (("list", samples), ("callable", lambda: (s for s in samples)), ("reader", Reader())):
        result = convert(ConvertOptions(model=CNN, output=tmp_path / f"{name}.onnx", calib=data))
        assert sha256(tmp_path / f"{name}.onnx") == sha256(tmp_path / "d.onnx"), name
        assert result.calibration_samples == from_dir.calibration_samples == 16
        assert result.agreement.samples == from_dir.agreement.samples == 4
        assert result.to_dict()["accuracy"]["outputs"] == from_dir.to_dict()["accuracy"]["outputs"]


def test_samples_in_memory_are_checked_against_the_model(tmp_path: Path) -> None:
    with pytest.raises(BadDataError, match="calibration data sample 0: arrays do not match"):
        convert(ConvertOptions(model=CNN, output=tmp_path / "q.onnx", calib=[{"x": np.zeros(3, np.float32)}]))
    with pytest.raises(BadDataError, match="expected a dict"):
        convert(ConvertOptions(model=CNN, output=tmp_path / "q.onnx", calib=[np.zeros(3)]))
    with pytest.raises(BadDataError, match="no samples"):
        convert(ConvertOptions(model=CNN, output=tmp_path / "q.onnx", calib=[]))
    assert list(tmp_path.iterdir()) == []


def test_result_to_dict_is_what_json_prints(tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    proc = quantcli("convert", CNN, "--calib", _calib_dir(tmp_path), "-o", out, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    result = convert(ConvertOptions(model=CNN, output=tmp_path / "api.onnx", calib=tmp_path / "calib"))
    mine = json.loads(json.dumps(result.to_dict()))
    assert printed["exit_code"] == mine["exit_code"] == 0
    assert set(printed) == set(mine)
    for key in ("mode", "compute_nodes", "accuracy", "calibration_samples", "float_reasons"):
        assert printed[key] == mine[key], key


# --- convert is a CI gate: compare's thresholds, exit 1 after writing the model -----------------


def test_convert_gate_passes_and_fails_after_writing(tmp_path: Path) -> None:
    calib = _calib_dir(tmp_path)
    out, junit, summary = tmp_path / "q.onnx", tmp_path / "j.xml", tmp_path / "s.md"
    args = ["convert", CNN, "--calib", calib, "-o", out, "--json", "--junit", junit, "--markdown", summary]
    proc = quantcli(*args, "--min-cosine", "0.99", "--max-size-ratio", "0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["exit_code"] == 0 and [c["passed"] for c in data["checks"]] == [True, True]
    assert 'failures="0"' in junit.read_text() and "all checks passed" in summary.read_text()

    out.unlink()
    proc = quantcli(*args, "--min-sqnr", "logits=200", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert out.exists()  # the model is written; the gate says it misses the bound
    data = json.loads(proc.stdout)
    assert (
        data["exit_code"] == 1
        and data["checks"][0]["option"] == "--min-sqnr"
        and not data["checks"][0]["passed"]
    )
    assert proc.stderr.strip().splitlines() == [
        f"quantcli convert: check failed: {data['checks'][0]['message']}"
    ]
    assert 'failures="1"' in junit.read_text() and "1 of 1 checks failed" in summary.read_text()


def test_convert_gate_refuses_what_it_cannot_check(tmp_path: Path) -> None:
    out = tmp_path / "q.onnx"
    proc = quantcli("convert", CNN, "--calib", CALIB, "-o", out, "--min-cosine", "nope=0.9", cwd=tmp_path)
    assert_one_line_error(proc, 2, "no output 'nope'")
    proc = quantcli("convert", CNN, "--mode", "dynamic", "-o", out, "--min-cosine", "0.9", cwd=tmp_path)
    assert_one_line_error(proc, 2, "evaluation samples")
    proc = quantcli("convert", CNN, "--calib", CALIB, "-o", out, "--max-accuracy-drop", "0.01", cwd=tmp_path)
    assert_one_line_error(proc, 2, "--max-accuracy-drop", "labels")
    assert not out.exists()


# --- help and progress --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "compare"])
def test_help_lists_every_option_in_a_named_section(tmp_path: Path, command: str) -> None:
    proc = quantcli(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Other options" not in proc.stdout  # every option was placed in a section
    assert "Output:" in proc.stdout and "--min-cosine" in proc.stdout
    if command == "convert":
        assert "Calibration" in proc.stdout and "[default: (static" in proc.stdout


def test_progress_advances_to_the_end(tmp_path: Path) -> None:
    """Each stage's progress reaches its total: calibration, mixed's sensitivity passes, evaluation."""
    seen: dict[str, tuple[int, int]] = {}

    def progress(label: str, done: int, total: int) -> None:
        assert 0 <= done <= total
        seen[label.split(" on ")[0]] = (done, total)

    convert(
        ConvertOptions(model=CNN, output=tmp_path / "q.onnx", calib=_calib_dir(tmp_path), mode="mixed"),
        progress=progress,
    )
    assert set(seen) == {"calibrating", "measuring per-node INT8 error", "evaluating"}, seen
    assert all(done == total > 0 for done, total in seen.values()), seen
    assert seen["evaluating"] == (4, 4)


def test_progress_shows_on_a_terminal_stderr_with_json_on_stdout(tmp_path: Path) -> None:
    """`--json > file` in a terminal: stdout is the file, stderr still shows the progress bar."""
    import os
    import pty
    import subprocess
    import sys

    from conftest import ROOT

    master, slave = pty.openpty()
    out = tmp_path / "q.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantcli.cli",
            "convert",
            str(CNN),
            "--calib",
            str(CALIB),
            "-o",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:  # the pty's other end is closed: everything was read
        pass
    os.close(master)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["exit_code"] == 0
    assert b"calibrating" in shown


# --- data: image channels from the model, compare's image option, too few samples ---------------


def _gray_model(path: Path) -> Path:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, 1, 3, 3], rng.normal(size=36).astype(np.float32).tolist()
    )
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "gray",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 14, 14])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_grayscale_images_for_a_one_channel_model(tmp_path: Path) -> None:
    from PIL import Image

    model = _gray_model(tmp_path / "gray.onnx")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8), mode="L").save(
            images / f"{i:02d}.png"
        )
    out = tmp_path / "q.onnx"
    spec = "resize=16,crop=16,mean=0.5,std=0.25"
    proc = quantcli(
        "convert", model, "--calib", images, "--calib-preprocess", spec, "-o", out, "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"]["outputs"][0]["cosine_mean"] > 0.99
    proc = quantcli(
        "compare",
        model,
        out,
        "--data",
        images,
        "--data-preprocess",
        spec,
        "--min-cosine",
        "0.99",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    proc = quantcli("compare", model, out, "--data", images, cwd=tmp_path)
    assert_one_line_error(proc, 2, "--data-preprocess")
    rgb = "mean=0.485,0.456,0.406,std=0.229,0.224,0.225"
    proc = quantcli(
        "convert",
        model,
        "--calib",
        images,
        "--calib-preprocess",
        rgb,
        "-o",
        tmp_path / "r.onnx",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, 2, "--calib-preprocess", "mean has 3 values", "1 channel")


def test_too_few_samples_are_said(tmp_path: Path) -> None:
    calib = tmp_path / "five"
    calib.mkdir()
    for p in sorted(CALIB.glob("*.npz"))[:5]:
        (calib / p.name).write_bytes(p.read_bytes())
    proc = quantcli("convert", CNN, "--calib", calib, "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"few-calibration-samples", "few-evaluation-samples"} <= set(data["warning_codes"])
    assert data["calibration_samples"] == 4 and data["accuracy"]["samples"] == 1
    proc = quantcli("convert", CNN, "--calib", calib, "-o", tmp_path / "q.onnx", cwd=tmp_path)
    assert "1 sample (1 sample held out" in proc.stdout
    assert "1 samples" not in proc.stdout


def test_a_file_holding_a_batch_counts_its_rows(tmp_path: Path) -> None:
    """Per-file samples of a model with a free batch axis may each hold several rows: the report
    counts rows, not files."""
    calib = tmp_path / "batches"
    calib.mkdir()
    files = sorted(CALIB.glob("*.npz"))[:15]
    for k in range(5):
        rows = [np.load(p)["input"] for p in files[3 * k : 3 * k + 3]]
        np.savez(calib / f"b{k}.npz", input=np.concatenate(rows))
    proc = quantcli("convert", CNN, "--calib", calib, "-o", tmp_path / "q.onnx", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["calibration_samples"] == 12 and data["accuracy"]["samples"] == 3  # 4 files + 1 held out
