"""Shared fixtures: the shipped sample models, converted once per test session."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from quantcli.api import ConvertOptions, ConvertResult, convert

# The host's CPU features are an input, pinned here instead of inherited (quantcli/cpu.py): a CPU
# without VNNI, whose U8S8 kernels can saturate, so that convert also measures on exact kernels
# wherever a model could differ. On a VNNI machine those "host" figures are exact ones; tests assert
# only what holds on both kinds. Subprocesses (CLI tests) inherit it.
os.environ["QUANTCLI_CPU_FEATURES"] = "avx2"

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
DATA = ROOT / "calibration_data"
SAMPLE_NAMES = ("digits_cnn", "digits_vit", "digits_mlp")
CALIB_SAMPLES = 64


@dataclass
class Converted:
    name: str
    source: Path
    output: Path
    plan: Path
    result: ConvertResult


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def optimized_op_counts(model_path: Path, tmp_dir: Path, *, layout: bool = False) -> collections.Counter:
    """Op types of the graph onnxruntime's CPU provider actually runs (after its QDQ fusions)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    # Extended level: the QDQ fusions, without hardware-specific NCHWc layout rewrites; `layout`:
    # all optimizations, as a session gets by default (NHWC QLinearConv, NCHWc float Conv).
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if layout
        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    opts.optimized_model_filepath = str(tmp_dir / f"{model_path.stem}.optimized.onnx")
    ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    return collections.Counter(n.op_type for n in optimized.graph.node), optimized


def convert_sample(name: str, out_dir: Path, tag: str, *, calibrated: bool = True, **options) -> Converted:  # noqa: ANN003
    """Convert sample model `name` into `out_dir` (`<name>_<tag>.onnx` and its plan), evaluated on
    its eval samples, calibrated on CALIB_SAMPLES of its calibration samples unless told not to."""
    output = out_dir / f"{name}_{tag}.onnx"
    plan = out_dir / f"{name}_{tag}_plan.json"
    calib = {"calib": DATA / name / "calib", "calib_samples": CALIB_SAMPLES} if calibrated else {}
    options.setdefault("check_latency", False)  # timed where latency is the subject (test_speed.py)
    result = convert(
        ConvertOptions(
            model=SAMPLES / f"{name}.onnx",
            output=output,
            eval=DATA / name / "eval",
            save_plan=plan,
            **calib,
            **options,
        )
    )
    return Converted(name, SAMPLES / f"{name}.onnx", output, plan, result)


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Converted]:
    """Each sample model's static conversion with every node INT8 that accuracy allows: the tests
    that read it check the integer form itself (the speed plan's own choices: test_speed.py)."""
    out_dir = tmp_path_factory.mktemp("converted")
    return {name: convert_sample(name, out_dir, "int8", speed_plan=False) for name in SAMPLE_NAMES}


@pytest.fixture(scope="session")
def converted_modes(tmp_path_factory: pytest.TempPathFactory):
    """Convert (model, mode) on first use, once per session; modes that need no calibration."""
    out_dir = tmp_path_factory.mktemp("modes")
    cache: dict[tuple[str, str], Converted] = {}

    def get(name: str, mode: str) -> Converted:
        if (name, mode) not in cache:
            cache[(name, mode)] = convert_sample(name, out_dir, mode, calibrated=False, mode=mode)
        return cache[(name, mode)]

    return get


def threads_calling(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[str]:
    """Wrap `owner.name` to record the name of the thread of each call (in call order)."""
    import threading

    calls: list[str] = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def quantcli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a separate process, output captured, not a terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "quantcli.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
