"""The benchmark's cases (model + calibration + evaluation samples) and how their samples load.

Standard library + numpy only: the conversion child processes import it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE_NAMES = ("digits_cnn", "digits_vit", "digits_mlp")
REAL_NAMES = ("minilm", "effnet_lite0")
BIG_BATCH = 32

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One FP32 model to convert and measure, with its samples and what to score it by."""

    name: str
    model: Path
    calib: Path
    eval: Path
    output: str | None = None  # the output scored (None: the first)
    classifier: bool = True  # top-1 agreement with FP32 is meaningful
    batches: tuple[int, ...] = (1,)  # latency batch sizes

    @property
    def labels_file(self) -> Path:
        return self.eval / "labels.npy"


def sample_case(name: str) -> Case:
    data = REPO / "calibration_data" / name
    model = REPO / "sample_models" / f"{name}.onnx"
    return Case(name, model, data / "calib", data / "eval", batches=(1, BIG_BATCH))


def real_cases(cache: Path | None = None) -> tuple[list[Case], list[str]]:
    """The exported real models that are ready (in `cache`, default benchmarks/.cache), and a note for
    each one that is not."""
    try:
        from real_models.cases import TOP1_AGREEMENT
        from real_models.cases import real_cases as listed
    except ImportError:  # benchmarks/real_models not there: look for the directories export.py writes
        return _detected_real_cases(cache or HERE / ".cache")
    cases, notes = [], []
    for real in listed(cache):
        if not (real.ready and real.eval.is_dir()):
            notes.append(f"{real.name}: skipped, not exported (python benchmarks/real_models/export.py)")
            continue
        classifier = real.metric == TOP1_AGREEMENT
        cases.append(Case(real.name, real.model, real.calib, real.eval, real.output, classifier))
    return cases, notes


def _detected_real_cases(cache: Path) -> tuple[list[Case], list[str]]:
    cases, notes = [], []
    for name in REAL_NAMES:
        root = cache / name
        if not ((root / "model.onnx").is_file() and (root / "eval").is_dir()):
            notes.append(f"{name}: skipped, {root} has no model.onnx and eval/")
            continue
        output, classifier = ("embedding", False) if name == "minilm" else ("logits", True)
        cases.append(Case(name, root / "model.onnx", root / "calib", root / "eval", output, classifier))
    return cases, notes


def all_cases() -> tuple[list[Case], list[str]]:
    real, notes = real_cases()
    return [sample_case(n) for n in SAMPLE_NAMES] + real, notes


def sample_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npz"))


def load_feed(path: Path) -> Feed:
    """One sample: every array of the .npz, named as the model input it feeds."""
    with np.load(path) as data:
        return {name: np.asarray(data[name]) for name in data.files}


def load_feeds(directory: Path) -> list[Feed]:
    return [load_feed(f) for f in sample_files(directory)]


def load_labels(case: Case) -> np.ndarray | None:
    return np.load(case.labels_file) if case.labels_file.is_file() else None


def batch_of(feeds: list[Feed], size: int) -> Feed:
    """The first `size` samples concatenated along the batch axis."""
    if len(feeds) < size:
        raise ValueError(f"a batch of {size} needs {size} samples, found {len(feeds)}")
    return {name: np.concatenate([f[name] for f in feeds[:size]]) for name in feeds[0]}
