"""Where `export.py` puts the real models and their samples, as benchmark cases.

Standard library only, so that any benchmark script can import it. From a script in
`benchmarks/` (whose directory Python puts on sys.path):

    from real_models.cases import real_cases

    for case in real_cases():          # benchmarks/.cache unless told otherwise
        if not case.ready:
            print(f"{case.name}: missing, run python benchmarks/real_models/export.py")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = BENCHMARKS / ".cache"

MINILM = "minilm"
EFFNET = "effnet_lite0"
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
CALIB_DIR = "calib"
EVAL_DIR = "eval"

COSINE = "cosine"  # mean cosine similarity of the output vs FP32
TOP1_AGREEMENT = "top1_agreement"  # share of samples whose top-1 class equals FP32's


@dataclass(frozen=True)
class RealCase:
    """One exported model and its samples (one .npz per sample, one array per model input)."""

    name: str
    model: Path
    calib: Path
    eval: Path
    metric: str
    output: str
    has_labels: bool = False

    @property
    def root(self) -> Path:
        return self.model.parent

    @property
    def ready(self) -> bool:
        """True once export.py has finished this case (it writes meta.json last)."""
        return (self.root / META_FILE).is_file() and self.model.is_file()


def case_dir(cache: Path, name: str) -> Path:
    return Path(cache) / name


def make_case(cache: Path, name: str, metric: str, output: str) -> RealCase:
    root = case_dir(cache, name)
    return RealCase(name, root / MODEL_FILE, root / CALIB_DIR, root / EVAL_DIR, metric, output)


def real_cases(cache: str | Path | None = None, ready_only: bool = False) -> list[RealCase]:
    """The real-model cases under `cache` (default benchmarks/.cache); `ready_only` drops unexported ones."""
    root = Path(cache) if cache is not None else DEFAULT_CACHE
    cases = [
        make_case(root, MINILM, COSINE, "embedding"),
        make_case(root, EFFNET, TOP1_AGREEMENT, "logits"),
    ]
    return [c for c in cases if c.ready] if ready_only else cases
