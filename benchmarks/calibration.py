"""Calibration benchmark: quantcli's calibration vs onnxruntime.quantization's calibrators.

A dev script, not a test. Run from the repository root:

    python benchmarks/calibration.py --markdown benchmarks/CALIBRATION.md

For every case (model + 200 calibration samples + held-out evaluation samples) and every
calibration method it runs, each in its own child process under a memory limit
(``resource.setrlimit(RLIMIT_AS)``, ``--mem-limit-gb``, default 16) and a wall-clock limit
(``--timeout-minutes``, default 15):

1. calibration alone, timed (model loading and preprocessing excluded):
   - quantcli: ``quantcli.calibration.collect.collect_ranges`` on
     ``quantcli.preprocess.preprocess(onnx.load(model)).model``;
   - onnxruntime: ``create_calibrator`` + ``collect_data`` + ``compute_data`` on the model
     ``quant_pre_process`` made (prepared once per case in another child), cwd a temporary
     directory;
   wall time of that part and peak RSS of the child (``VmHWM`` of ``/proc/self/status``);
2. a static INT8 conversion with the same method and samples:
   - quantcli: ``quantcli.convert(ConvertOptions(mode="static", calib=..., eval=...,
     calib_samples=N, calibration=CalibrationConfig(method=M)))``;
   - onnxruntime: ``quantize_static`` (QDQ, per-channel, QUInt8 activations, QInt8 weights,
     the same ``calibrate_method``);
   then scores both INT8 models against FP32 on the evaluation samples in this process, with
   the same code: mean cosine of the first output, top-1 agreement (classifiers) and
   accuracy vs ``eval/labels.npy`` (when present);
3. quantcli's peak RSS calibrating 100 and 500 samples (500 = the calibration samples
   repeated, float inputs perturbed with 1% Gaussian noise after the first pass), target
   RSS(500) <= 1.1 x RSS(100).

onnxruntime has no MSE method: quantcli's ``mse`` is compared with its other methods only.
An out-of-memory child is reported as ``OOM``, one past the time limit as ``timeout``.
Every child imports quantcli from a copy of ``quantcli/`` taken at the start, so edits made
to the tree while the benchmark runs do not mix two versions in one table.
The report starts with the benchmarks' shared header (``_bench_report.run_header``: CPU, versions,
command, load); ``--json FILE`` also writes every figure (``_bench_report.write_json``).
All outputs go to a temporary directory; nothing is written into the repository except the
optional ``--markdown`` and ``--json`` files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _bench_cases import (
    REAL_NAMES,
    REPO,
    SAMPLE_NAMES,
    Case,
    Feed,
    all_cases,
    load_feed,
    load_feeds,
    load_labels,
    sample_files,
)
from _bench_convert import (
    child_env,
    feed_reader,
    first_error_line,
    first_line,
    memory_mb,
    ort_preprocess,
    peak_rss_mb,
    qdq_static,
    run_child,
)
from _bench_measure import Accuracy, make_session, run_outputs, score
from _bench_report import command_line, log, md_table, plain_table, run_header, write_json

QUANTCLI, ORT, FP32 = "quantcli", "onnxruntime", "fp32"
METHODS = ("minmax", "entropy", "percentile", "mse")
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
HISTOGRAM_METHODS = ("entropy", "percentile")
SCALING_SAMPLES = (100, 500)
SCALING_TARGET = 1.1
OK, OOM, TIMEOUT, FAILED = "ok", "OOM", "timeout", "FAILED"
OOM_MARKERS = (
    "memoryerror",
    "bad_alloc",
    "failed to allocate",
    "unable to allocate",
    "cannot allocate memory",
)


# --------------------------------------------------------------------------- cases and samples


def ready_cases(names: Sequence[str], minutes: float, poll_s: float = 30.0) -> tuple[list[Case], list[str]]:
    """The named cases, once every real one is exported or `minutes` pass (polling every poll_s);
    notes for the ones still missing."""
    deadline = time.monotonic() + minutes * 60
    while True:
        cases, notes = all_cases()
        missing = [n for n in names if n not in {c.name for c in cases}]
        if not missing or time.monotonic() >= deadline:
            notes = [f"{n} (waited {minutes:g} min)" for n in notes if n.split(":", 1)[0] in names]
            return [c for c in cases if c.name in names], notes
        log(f"waiting for {', '.join(missing)} (polling every {poll_s:.0f} s) ...")
        time.sleep(poll_s)


def write_scaled_samples(source: Path, dest: Path, count: int, seed: int = 0) -> None:
    """`count` samples in `dest`: the source samples in order, repeated; float inputs of the
    repeats get Gaussian noise of 1% of the sample's standard deviation so no two are equal."""
    files = sample_files(source)
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = load_feed(files[i % len(files)])
        if i >= len(files):
            for key, value in sample.items():
                if value.dtype.kind == "f":
                    noise = rng.standard_normal(value.shape) * (0.01 * float(value.std()) or 1e-3)
                    sample[key] = (value + noise).astype(value.dtype)
        np.savez(dest / f"sample_{i:04d}.npz", **sample)


# --------------------------------------------------------------------------- child processes


@dataclass
class Task:
    """What one child process does; passed to it as JSON."""

    kind: str  # qc-calib, ort-calib, qc-convert, ort-quantize, ort-prep
    model: str
    result: str  # where the child writes its JSON result
    mem_limit_bytes: int
    calib: str = ""
    eval: str = ""
    output: str = ""
    method: str = "minmax"
    samples: int = 200
    percentile: float = 99.99


def calib_feeds(task: Task) -> Iterator[Feed]:
    """The task's first `samples` calibration samples, read one at a time."""
    return map(load_feed, sample_files(Path(task.calib))[: task.samples])


def child_qc_calibrate(task: Task) -> dict[str, Any]:
    import onnx

    from quantcli.calibration.collect import CalibrationConfig, collect_ranges
    from quantcli.calibration.data import InputSpec, find_samples, iter_samples
    from quantcli.calibration.ranges import CalibMethod
    from quantcli.preprocess import preprocess

    model = preprocess(onnx.load(task.model)).model
    specs = InputSpec.from_model(model)
    refs = find_samples(task.calib)[: task.samples]
    config = CalibrationConfig(method=CalibMethod(task.method), percentile=task.percentile)
    base = memory_mb("VmRSS")
    start = time.perf_counter()
    ranges = collect_ranges(model, lambda: iter_samples(refs, specs), config)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "base_rss_mb": base, "tensors": len(ranges.ranges), "samples": ranges.samples}


def child_ort_prepare(task: Task) -> dict[str, Any]:
    model, notes = ort_preprocess(task.model, task.output)
    return {"model": model, "notes": notes}


def child_ort_calibrate(task: Task) -> dict[str, Any]:
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method = getattr(CalibrationMethod, ORT_METHODS[task.method])
    extra = {"percentile": task.percentile} if task.method == "percentile" else {}
    reader = feed_reader(calib_feeds(task))
    with tempfile.TemporaryDirectory(prefix="ort-calib.", dir=os.getcwd()) as tmp:
        base = memory_mb("VmRSS")
        start = time.perf_counter()
        calibrator = create_calibrator(
            task.model,
            op_types_to_calibrate=None,
            augmented_model_path=str(Path(tmp) / "augmented_model.onnx"),
            calibrate_method=method,
            use_external_data_format=False,
            extra_options=extra,
        )
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
        wall = time.perf_counter() - start
    return {"wall_s": wall, "base_rss_mb": base, "tensors": len(data.data), "samples": task.samples}


def child_qc_convert(task: Task) -> dict[str, Any]:
    from quantcli import ConvertOptions, convert
    from quantcli.calibration.collect import CalibrationConfig
    from quantcli.calibration.ranges import CalibMethod

    start = time.perf_counter()
    result = convert(
        ConvertOptions(
            model=Path(task.model),
            output=Path(task.output),
            mode="static",
            calib=Path(task.calib),
            calib_samples=task.samples,
            eval=Path(task.eval),
            calibration=CalibrationConfig(method=CalibMethod(task.method), percentile=task.percentile),
        )
    )
    out: dict[str, Any] = {
        "wall_s": time.perf_counter() - start,
        "calibrate_s": result.seconds.get("calibrate"),
    }
    if result.agreement is not None and result.agreement.outputs:
        first = result.agreement.outputs[0]
        out |= {"reported_cosine": first.cosine_mean, "reported_top1": first.top1_agreement}
    return out


def child_ort_quantize(task: Task) -> dict[str, Any]:
    extra = {"CalibPercentile": task.percentile} if task.method == "percentile" else {}
    start = time.perf_counter()
    qdq_static(task.model, task.output, calib_feeds(task), ORT_METHODS[task.method], extra)
    return {"wall_s": time.perf_counter() - start}


CHILD_TASKS: dict[str, Callable[[Task], dict[str, Any]]] = {
    "qc-calib": child_qc_calibrate,
    "ort-prep": child_ort_prepare,
    "ort-calib": child_ort_calibrate,
    "qc-convert": child_qc_convert,
    "ort-quantize": child_ort_quantize,
}


def is_oom(text: str) -> bool:
    low = text.lower()
    return any(marker in low for marker in OOM_MARKERS)


def child_main(task_json: str) -> int:
    """Entry point of a child: memory limit first, then the task; the result goes to task.result."""
    task = Task(**json.loads(task_json))
    resource.setrlimit(resource.RLIMIT_AS, (task.mem_limit_bytes, task.mem_limit_bytes))
    try:
        result = CHILD_TASKS[task.kind](task)
    except Exception as exc:  # noqa: BLE001 - every failure is a result to report
        error = first_line(exc, typed=True)
        result = {"error": error, "oom": isinstance(exc, MemoryError) or is_oom(error)}
    result["peak_rss_mb"] = peak_rss_mb()
    quantcli = sys.modules.get("quantcli")
    if quantcli is not None and quantcli.__file__:
        result["quantcli"] = str(Path(quantcli.__file__).parent)
    Path(task.result).write_text(json.dumps(result))
    return 1 if "error" in result else 0


@dataclass
class Outcome:
    """One child's outcome: status (ok / OOM / timeout / FAILED), its result, time and memory."""

    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    peak_rss_mb: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def wall_s(self) -> float | None:
        return self.result.get("wall_s") if self.ok else None


class Runner:
    """Starts the children: memory limit, wall-clock limit, a private temporary cwd each."""

    def __init__(self, workdir: Path, mem_limit_gb: float, timeout_s: float, source: Path) -> None:
        self.workdir = workdir
        self.mem_limit_bytes = int(mem_limit_gb * 2**30)
        self.timeout_s = timeout_s
        self.source = source  # the directory holding the copy of quantcli/ the children import
        env = child_env()
        self.env = env | {"PYTHONPATH": os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))}
        self.foreign: set[str] = set()  # quantcli packages children imported other than `source`
        self._count = 0

    def task(self, kind: str, model: Path | str, **kwargs: Any) -> Task:
        self._count += 1
        result = self.workdir / f"result-{self._count:03d}.json"
        return Task(kind, str(model), str(result), self.mem_limit_bytes, **kwargs)

    def run(self, task: Task) -> Outcome:
        cwd = Path(tempfile.mkdtemp(prefix=f"{task.kind}.", dir=self.workdir))
        argv = [sys.executable, "-B", str(Path(__file__).resolve()), "--child", json.dumps(asdict(task))]
        child = run_child(argv, cwd, self.env, self.timeout_s)
        result_path = Path(task.result)
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        imported = result.pop("quantcli", None)
        if imported and Path(imported) != self.source / "quantcli":
            self.foreign.add(imported)
        peak = result.get("peak_rss_mb", child.max_rss_mb)  # rusage's figure: a child killed before writing
        if child.timed_out:
            return Outcome(TIMEOUT, result, f"killed after {self.timeout_s / 60:g} min", peak)
        if "error" in result:
            return Outcome(OOM if result.get("oom") else FAILED, result, result["error"], peak)
        code = child.returncode
        if code != 0 or not result:
            killed = code == -signal.SIGKILL  # the kernel's OOM killer, as nothing else here sends SIGKILL
            status_name = OOM if killed or is_oom(child.stderr) else FAILED
            return Outcome(status_name, result, f"exit {code}: {first_error_line(child.stderr)}", peak)
        return Outcome(OK, result, "", peak)


# --------------------------------------------------------------------------- accuracy (this process)


class Scorer:
    """FP32 outputs of a case's evaluation samples, and the same metrics for every candidate."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.feeds = load_feeds(case.eval)
        self.labels = load_labels(case)
        self.reference = run_outputs(make_session(case.model), self.feeds, case.output)

    def score(self, model: Path) -> Accuracy:
        outputs = run_outputs(make_session(model), self.feeds, self.case.output)
        return score(outputs, self.reference, self.labels, self.case.classifier)


# --------------------------------------------------------------------------- one case


@dataclass
class Row:
    case: str
    tool: str
    method: str
    samples: int
    calib: Outcome | None = None
    convert: Outcome | None = None
    accuracy: Accuracy | None = None


@dataclass
class Scaling:
    case: str
    method: str
    outcomes: dict[int, Outcome]

    @property
    def ratio(self) -> float | None:
        low, high = (self.outcomes.get(n) for n in SCALING_SAMPLES)
        if low is None or high is None or not (low.ok and high.ok) or not low.peak_rss_mb:
            return None
        return high.peak_rss_mb / low.peak_rss_mb


@dataclass
class CaseResult:
    rows: list[Row] = field(default_factory=list)
    scaling: Scaling | None = None
    notes: list[str] = field(default_factory=list)


def run_case(case: Case, runner: Runner, args: argparse.Namespace) -> CaseResult:
    out = CaseResult()
    work = Path(tempfile.mkdtemp(prefix=f"{case.name}.", dir=runner.workdir))
    scorer = Scorer(case)
    fp32 = score(scorer.reference, scorer.reference, scorer.labels, case.classifier)
    out.rows.append(Row(case.name, FP32, "-", 0, accuracy=fp32))
    n = args.samples

    ort_methods = [m for m in args.methods if m in ORT_METHODS]
    if ort_methods:
        log(f"[{case.name}] onnxruntime quant_pre_process ...")
        prep = runner.run(runner.task("ort-prep", case.model, output=str(work / "ort_preprocessed.onnx")))
        if not prep.ok:
            out.notes.append(f"{case.name}: quant_pre_process {prep.status}: {prep.error}")
            ort_methods = []
        else:
            ort_model = prep.result["model"]
            out.notes += [f"{case.name}: {note}" for note in prep.result["notes"]]

    common = {"calib": str(case.calib), "samples": n, "percentile": args.percentile}
    for method in args.methods:
        tools = [QUANTCLI] + ([ORT] if method in ort_methods else [])
        for tool in tools:
            row = Row(case.name, tool, method, n)
            output = work / f"{tool}.{method}.onnx"
            log(f"[{case.name}] {tool} {method}: calibrating {n} samples ...")
            if tool == QUANTCLI:
                row.calib = runner.run(runner.task("qc-calib", case.model, method=method, **common))
                log(f"[{case.name}] {tool} {method}: convert ...")
                row.convert = runner.run(
                    runner.task(
                        "qc-convert",
                        case.model,
                        method=method,
                        eval=str(case.eval),
                        output=str(output),
                        **common,
                    )
                )
            else:
                row.calib = runner.run(runner.task("ort-calib", ort_model, method=method, **common))
                log(f"[{case.name}] {tool} {method}: quantize_static ...")
                row.convert = runner.run(
                    runner.task("ort-quantize", ort_model, method=method, output=str(output), **common)
                )
            if row.convert.ok and output.exists():
                row.accuracy = scorer.score(output)
                output.unlink()
            out.notes += outcome_notes(case.name, row)
            out.notes += cross_check(case.name, row)
            out.rows.append(row)
            log(f"[{case.name}] {tool} {method}: {summary(row)}")

    if args.scaling_method:
        out.scaling = run_scaling(case, runner, work, args)
    return out


def run_scaling(case: Case, runner: Runner, work: Path, args: argparse.Namespace) -> Scaling:
    samples = work / "scaled"
    log(f"[{case.name}] writing {max(SCALING_SAMPLES)} samples for the memory scaling check ...")
    write_scaled_samples(case.calib, samples, max(SCALING_SAMPLES))
    outcomes = {}
    for n in SCALING_SAMPLES:
        log(f"[{case.name}] quantcli {args.scaling_method}: calibrating {n} samples (memory scaling) ...")
        task = runner.task(
            "qc-calib",
            case.model,
            calib=str(samples),
            samples=n,
            method=args.scaling_method,
            percentile=args.percentile,
        )
        outcomes[n] = runner.run(task)
    return Scaling(case.name, args.scaling_method, outcomes)


def outcome_notes(case: str, row: Row) -> list[str]:
    notes = []
    for stage, outcome in (("calibration", row.calib), ("conversion", row.convert)):
        if outcome is not None and not outcome.ok:
            notes.append(f"{case} / {row.tool} {row.method} {stage}: {outcome.status}: {outcome.error}")
    return notes


def cross_check(case: str, row: Row) -> list[str]:
    """Note when quantcli's own accuracy report disagrees with this script's measurement."""
    if row.tool != QUANTCLI or row.accuracy is None or row.convert is None:
        return []
    reported = row.convert.result.get("reported_cosine")
    if reported is None or abs(reported - row.accuracy.cosine) < 1e-5:
        return []
    return [
        f"{case} / quantcli {row.method}: its report says cosine {reported:.6f}, measured here {row.accuracy.cosine:.6f}"
    ]


def summary(row: Row) -> str:
    calib = row.calib
    if calib is None:
        return "-"
    head = f"{calib.wall_s:.1f} s" if calib.ok else calib.status
    acc = f", cosine {row.accuracy.cosine:.5f}" if row.accuracy else ""
    return f"calibration {head}, peak {calib.peak_rss_mb:.0f} MB{acc}"


# --------------------------------------------------------------------------- verdicts


def find(rows: list[Row], case: str, tool: str, method: str) -> Row | None:
    return next((r for r in rows if (r.case, r.tool, r.method) == (case, tool, method)), None)


def target_speed_memory(rows: list[Row], cases: list[Case], methods: Sequence[str]) -> list[str]:
    """The issue's target: entropy/percentile calibration no slower than onnxruntime's and at most
    half its peak RSS, on the real models."""
    lines = []
    for case in (c for c in cases if c.name in REAL_NAMES):
        for method in (m for m in HISTOGRAM_METHODS if m in methods):
            qc, ort_row = find(rows, case.name, QUANTCLI, method), find(rows, case.name, ORT, method)
            if qc is None or ort_row is None or qc.calib is None or ort_row.calib is None:
                continue
            a, b = qc.calib, ort_row.calib
            if not a.ok:
                lines.append(f"{case.name} {method}: NOT MET (quantcli calibration {a.status}: {a.error})")
                continue
            qc_text = f"quantcli {a.wall_s:.1f} s / {a.peak_rss_mb:.0f} MB"
            if b.ok:
                fast = a.wall_s <= b.wall_s
                small = a.peak_rss_mb <= 0.5 * b.peak_rss_mb
                verdict = "MET" if fast and small else "NOT MET"
                lines.append(
                    f"{case.name} {method}: {verdict} - {qc_text} vs onnxruntime {b.wall_s:.1f} s / "
                    f"{b.peak_rss_mb:.0f} MB (time {'ok' if fast else 'slower'}: x{a.wall_s / b.wall_s:.2f}; "
                    f"RSS {'ok' if small else 'too high'}: x{a.peak_rss_mb / b.peak_rss_mb:.2f}, target <= x0.50)"
                )
            elif b.status in (OOM, TIMEOUT):
                lines.append(
                    f"{case.name} {method}: RSS MET, time NOT COMPARABLE - {qc_text}; onnxruntime {b.status} "
                    f"(peak {b.peak_rss_mb:.0f} MB when stopped: {b.error})"
                )
            else:
                lines.append(
                    f"{case.name} {method}: NOT COMPARABLE - {qc_text}; onnxruntime FAILED ({b.error})"
                )
    return lines


def target_scaling(results: list[Scaling]) -> list[str]:
    lines = []
    for s in results:
        low, high = (s.outcomes[n] for n in SCALING_SAMPLES)
        ratio = s.ratio
        if ratio is None:
            lines.append(
                f"{s.case} {s.method}: NOT MEASURED ({low.status} / {high.status}: {low.error or high.error})"
            )
            continue
        verdict = "MET" if ratio <= SCALING_TARGET else "NOT MET"
        lines.append(
            f"{s.case} {s.method}: {verdict} - peak RSS {low.peak_rss_mb:.0f} MB at {SCALING_SAMPLES[0]} samples "
            f"({low.wall_s:.1f} s), {high.peak_rss_mb:.0f} MB at {SCALING_SAMPLES[1]} ({high.wall_s:.1f} s): "
            f"x{ratio:.3f} (target <= x{SCALING_TARGET})"
        )
    return lines


@dataclass
class MethodScore:
    method: str
    top1: float | None  # mean top-1 agreement over the classifiers
    cosine: float  # mean cosine over every model
    worst: float  # worst cosine over every model
    wins: int  # models on which its cosine is the highest (ties count for each)


def best_method(rows: list[Row], methods: Sequence[str], cases: list[Case]) -> list[str]:
    """quantcli's methods ranked over every model: mean top-1 agreement over the classifiers, then
    mean cosine; methods within 0.1 point of top-1 and 1e-5 of cosine of the best are tied."""
    accuracy = {(r.case, r.method): r.accuracy for r in rows if r.tool == QUANTCLI and r.accuracy is not None}
    scores, missing = [], []
    for method in methods:
        found = [accuracy[(c.name, method)] for c in cases if (c.name, method) in accuracy]
        if len(found) < len(cases):
            missing.append(f"{method}: {len(cases) - len(found)} model(s) without a result, not ranked")
            continue
        top1 = [a.top1_agree for a in found if a.top1_agree is not None]
        cosines = [a.cosine for a in found]
        wins = sum(
            accuracy[(c.name, method)].cosine
            >= max(a.cosine for (name, _), a in accuracy.items() if name == c.name) - 1e-7
            for c in cases
        )
        top1_mean = float(np.mean(top1)) if top1 else None
        scores.append(MethodScore(method, top1_mean, float(np.mean(cosines)), min(cosines), wins))
    if not scores:
        return missing or ["(no method measured on every model)"]
    scores.sort(key=lambda m: (-(m.top1 or 0.0), -m.cosine))
    best = scores[0]
    tied = [
        m.method
        for m in scores[1:]
        if abs((m.top1 or 0.0) - (best.top1 or 0.0)) < 1e-3 and abs(m.cosine - best.cosine) < 1e-5
    ]
    lines = [
        f"best: {best.method}"
        + (f" (tied with {', '.join(tied)})" if tied else "")
        + " - ranked by mean top-1 agreement over the classifiers, then mean cosine over all models"
    ]
    for m in scores:
        top1 = "-" if m.top1 is None else f"{m.top1 * 100:.2f}%"
        lines.append(
            f"{m.method}: mean top-1 agreement {top1}, mean cosine {m.cosine:.6f}, worst cosine "
            f"{m.worst:.6f}, highest cosine on {m.wins} of {len(cases)} models"
        )
    return lines + missing


def accuracy_pairs(rows: list[Row], cases: list[Case], methods: Sequence[str]) -> list[list[str]]:
    """Per model and method: quantcli's accuracy next to onnxruntime's quantize_static."""
    table = []
    for case in cases:
        for method in methods:
            qc, ort_row = find(rows, case.name, QUANTCLI, method), find(rows, case.name, ORT, method)
            if qc is None:
                continue
            cells = [case.name, method]
            for row in (qc, ort_row):
                if row is None:
                    cells += ["n/a", "n/a", "n/a"]
                elif row.accuracy is None:
                    status = row.convert.status if row.convert is not None else "-"
                    cells += [status, "-", "-"]
                else:
                    a = row.accuracy
                    cells += [f"{a.cosine:.5f}", pct(a.top1_agree), pct(a.labels)]
            table.append(cells)
    return table


# --------------------------------------------------------------------------- rendering


HEADERS = (
    "model",
    "tool",
    "method",
    "samples",
    "calib s",
    "peak RSS MB",
    "tensors",
    "cosine",
    "top-1 agree",
    "acc",
    "convert peak MB",
)
PAIR_HEADERS = (
    "model",
    "method",
    "quantcli cosine",
    "quantcli top-1",
    "quantcli acc",
    "ORT cosine",
    "ORT top-1",
    "ORT acc",
)
SCALING_HEADERS = ("model", "method", "samples", "calib s", "peak RSS MB", "RSS(500)/RSS(100)")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def row_cells(row: Row) -> list[str]:
    calib, conv, acc = row.calib, row.convert, row.accuracy
    if calib is None:
        calib_cells = ["-", "-", "-"]
    else:
        calib_cells = [
            f"{calib.wall_s:.2f}" if calib.ok else calib.status,
            f"{calib.peak_rss_mb:.0f}" if calib.peak_rss_mb else "-",
            str(calib.result.get("tensors", "-")),
        ]
    if acc is not None:
        acc_cells = [f"{acc.cosine:.5f}", pct(acc.top1_agree), pct(acc.labels)]
    else:
        acc_cells = [conv.status if conv is not None else "-", "-", "-"]
    conv_peak = f"{conv.peak_rss_mb:.0f}" if conv is not None and conv.peak_rss_mb else "-"
    samples = str(row.samples) if row.samples else "-"
    return [row.case, row.tool, row.method, samples, *calib_cells, *acc_cells, conv_peak]


def scaling_cells(results: list[Scaling]) -> list[list[str]]:
    table = []
    for s in results:
        for n, o in s.outcomes.items():
            ratio = s.ratio
            last = n == SCALING_SAMPLES[-1]
            table.append(
                [
                    s.case,
                    s.method,
                    str(n),
                    f"{o.wall_s:.2f}" if o.ok else o.status,
                    f"{o.peak_rss_mb:.0f}",
                    (f"{ratio:.3f}" if ratio is not None else "-") if last else "",
                ]
            )
    return table


LEGEND = [
    "calib s: wall time of the calibration alone (quantcli: collect_ranges on the preprocessed model; "
    "onnxruntime: create_calibrator + collect_data + compute_data on the quant_pre_process'd model); "
    "model loading, preprocessing and export excluded.",
    "peak RSS MB: VmHWM of that calibration child (the whole process: Python, model, calibration); "
    "convert peak MB: the same for the static INT8 conversion child (quantcli convert, which also "
    "verifies on the eval samples, or quantize_static).",
    "tensors: tensors whose range the tool calibrated.",
    "cosine: mean cosine similarity of the first output vs FP32 on the held-out samples; top-1 agree: "
    "share of samples whose argmax equals FP32's (classifiers); acc: accuracy vs eval/labels.npy.",
    "OOM: the child ran out of memory under the RLIMIT_AS limit (or was killed by the kernel's OOM killer); "
    "timeout: killed at the wall-clock limit; FAILED: another error (see notes). n/a: onnxruntime has no such method.",
]


def quantcli_fingerprint() -> str:
    """A hash of quantcli's source files: other work may change them while the benchmark runs."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "quantcli").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def header_lines(command: str, args: argparse.Namespace, cases: list[Case], fingerprint: str) -> list[str]:
    from quantcli.calibration.collect import CalibrationConfig

    defaults = CalibrationConfig()
    evals = ", ".join(f"{c.name} {len(sample_files(c.eval))}" for c in cases)
    return [
        *run_header(command),
        f"each child under RLIMIT_AS {args.mem_limit_gb:g} GB and a {args.timeout_minutes:g} min wall-clock limit, "
        f"importing quantcli from a copy of quantcli/ taken at the start (sources {fingerprint}); "
        f"{args.samples} calibration samples; held-out samples: {evals}",
        f"settings: quantcli defaults ({defaults.bins} bins, up to {defaults.batch_size} samples per run on "
        f"models with a free batch axis, --calib-memory {defaults.memory_budget_bytes // 2**20} MB); "
        f"percentile {args.percentile:g} for both tools; onnxruntime's other defaults "
        "(Entropy: 128 bins, 128 quantized bins; Percentile: 2048 bins, symmetric |x| histogram)",
    ]


@dataclass
class Report:
    header: list[str]
    rows: list[Row]
    pairs: list[list[str]]
    scaling: list[Scaling]
    speed_memory: list[str]
    scaling_verdicts: list[str]
    best: list[str]
    notes: list[str]


SCALING_DATA = (
    f"{SCALING_SAMPLES[1]} samples = the calibration samples repeated, float inputs of the repeats with "
    "Gaussian noise of 1% of their standard deviation (integer inputs repeat exactly); the first "
    f"{SCALING_SAMPLES[0]} are the originals."
)


def render_text(r: Report) -> str:
    parts = [*r.header, "", plain_table(HEADERS, [row_cells(x) for x in r.rows], range(3)), ""]
    parts += [
        "Accuracy of static INT8, quantcli vs onnxruntime quantize_static, same method and samples:",
        "",
    ]
    parts += [plain_table(PAIR_HEADERS, r.pairs, range(2)), ""]
    if r.scaling:
        parts += ["quantcli peak RSS vs number of calibration samples:", SCALING_DATA, ""]
        parts += [plain_table(SCALING_HEADERS, scaling_cells(r.scaling), range(2)), ""]
    parts += [
        "Target: entropy/percentile calibration on 200 samples no slower than onnxruntime's and peak RSS "
        "at most half of onnxruntime's (MiniLM, EfficientNet-Lite0):"
    ]
    parts += [f"  {line}" for line in r.speed_memory or ["(no real model measured)"]]
    parts += [f"Target: peak RSS({SCALING_SAMPLES[1]}) <= {SCALING_TARGET} x peak RSS({SCALING_SAMPLES[0]}):"]
    parts += [f"  {line}" for line in r.scaling_verdicts or ["(not measured)"]]
    parts += ["Which quantcli method measures best across the models:"]
    parts += [f"  {line}" for line in r.best]
    parts += ["", *LEGEND, *(f"note: {n}" for n in r.notes)]
    return "\n".join(parts)


def render_markdown(r: Report) -> str:
    parts = ["# Calibration: quantcli vs onnxruntime.quantization", ""]
    parts += [f"- {line}" for line in r.header]
    parts += ["", "## Calibration time, memory and static INT8 accuracy", ""]
    parts += [md_table(HEADERS, [row_cells(x) for x in r.rows], range(3)), ""]
    parts += [f"- {line}" for line in LEGEND]
    parts += ["", "## Accuracy side by side (same method, same samples)", ""]
    parts += [md_table(PAIR_HEADERS, r.pairs, range(2)), ""]
    if r.scaling:
        parts += ["## quantcli peak RSS vs number of calibration samples", "", SCALING_DATA, ""]
        parts += [md_table(SCALING_HEADERS, scaling_cells(r.scaling), range(2)), ""]
    parts += ["## Targets", ""]
    parts += [
        "Entropy/percentile calibration on 200 samples no slower than onnxruntime's, peak RSS at most half:",
        "",
    ]
    parts += [f"- {line}" for line in r.speed_memory or ["(no real model measured)"]]
    parts += ["", f"Peak RSS({SCALING_SAMPLES[1]}) <= {SCALING_TARGET} x peak RSS({SCALING_SAMPLES[0]}):", ""]
    parts += [f"- {line}" for line in r.scaling_verdicts or ["(not measured)"]]
    parts += ["", "Best quantcli method across the models:", ""]
    parts += [f"- {line}" for line in r.best]
    if r.notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None, case_names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=case_names, help="only these models (default: all)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="calibration methods"
    )
    parser.add_argument("--samples", type=int, default=200, help="calibration samples (default 200)")
    parser.add_argument(
        "--percentile", type=float, default=99.99, help="percentile for both tools (default 99.99)"
    )
    parser.add_argument(
        "--mem-limit-gb", type=float, default=16.0, help="RLIMIT_AS of each child (default 16)"
    )
    parser.add_argument(
        "--timeout-minutes", type=float, default=15.0, help="wall-clock limit of each child (default 15)"
    )
    parser.add_argument(
        "--scaling-method",
        default="entropy",
        choices=[*METHODS, ""],
        help="method of the 100 vs 500 sample memory check ('' to skip; default entropy)",
    )
    parser.add_argument(
        "--wait-minutes", type=float, default=20.0, help="wait this long for real models being exported"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown to this file")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    return args


def run_all(cases: list[Case], runner: Runner, args: argparse.Namespace, notes: list[str]) -> Report:
    rows: list[Row] = []
    scaling: list[Scaling] = []
    for case in cases:
        result = run_case(case, runner, args)
        rows += result.rows
        notes += result.notes
        if result.scaling is not None:
            scaling.append(result.scaling)
    if "mse" in args.methods:
        notes.append(
            "onnxruntime has no MSE calibration method: quantcli's mse is compared with its other methods only"
        )
    notes += [
        f"a child imported quantcli from {path}, not from the copy taken at the start"
        for path in runner.foreign
    ]
    return Report(
        header=[],
        rows=rows,
        pairs=accuracy_pairs(rows, cases, args.methods),
        scaling=scaling,
        speed_memory=target_speed_memory(rows, cases, args.methods),
        scaling_verdicts=target_scaling(scaling),
        best=best_method(rows, args.methods, cases),
        notes=notes,
    )


def figures(report: Report) -> dict[str, Any]:
    """The report for --json: every row's child outcomes and accuracy, the scaling check, the verdicts."""
    document = asdict(report)
    del document["header"]  # write_json puts it first
    document["scaling"] = [asdict(s) | {"ratio": s.ratio} for s in report.scaling]
    return document


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    args = parse_args(argv, [*SAMPLE_NAMES, *REAL_NAMES])
    cases, notes = ready_cases(args.cases or [*SAMPLE_NAMES, *REAL_NAMES], args.wait_minutes)
    fingerprint = quantcli_fingerprint()
    header = header_lines(command_line(__file__, argv), args, cases, fingerprint)
    with tempfile.TemporaryDirectory(prefix="calibration-bench.") as tmp:
        # Other work may edit quantcli/ while this runs: every child imports a copy taken now.
        snapshot = Path(tmp) / "src"
        shutil.copytree(
            REPO / "quantcli", snapshot / "quantcli", ignore=shutil.ignore_patterns("__pycache__")
        )
        runner = Runner(Path(tmp), args.mem_limit_gb, args.timeout_minutes * 60, snapshot)
        report = run_all(cases, runner, args, notes)
        report.header = header
    if quantcli_fingerprint() != fingerprint:
        report.notes.append(
            f"quantcli/ changed while this benchmark ran; every row was measured on the copy taken at the "
            f"start (sources {fingerprint})"
        )
    print(render_text(report), flush=True)
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(report))
        log(f"wrote {args.markdown}")
    write_json(args.json, report.header, figures(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
