"""Generate the sample ONNX models and calibration/eval data for quantcli.

Dev-only script. It needs the packages in ``scripts/requirements-dev.txt``
(``torch==2.13.0`` on CPU, ``onnxscript``, ``scikit-learn``) on top of the
project's own dependencies (``onnx``, ``onnxruntime``, ``numpy``).

Run it from the repository root::

    python scripts/make_samples.py

It trains three small classifiers on scikit-learn's bundled ``load_digits``
data set (no downloads), exports them with the TorchScript ONNX exporter
(opset 17) and writes:

* ``sample_models/digits_cnn.onnx`` - Conv+BatchNorm+ReLU CNN; the
  BatchNormalization nodes are kept in the graph (not folded into the convs).
* ``sample_models/digits_vit.onnx`` - small vision transformer with
  hand-written multi-head self-attention (MatMul/Softmax/Transpose/Reshape).
* ``sample_models/digits_mlp.onnx`` - MLP on the flattened 64 pixels (Gemm).
* ``calibration_data/<model>/calib/sample_NNNN.npz`` - 200 calibration samples.
* ``calibration_data/<model>/eval/sample_NNNN.npz`` plus ``labels.npy`` -
  held-out samples never used for training, with their int64 labels.

Every ``.npz`` holds one array per model input, named after the input
(``input``), float32, with a leading batch dimension of 1.

The script is deterministic (fixed seeds, deterministic torch algorithms,
two CPU threads) and re-runnable: it clears its old outputs first.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "sample_models"
DATA_DIR = REPO_ROOT / "calibration_data"

SEED = 20240501
NUM_EVAL = 300
NUM_CALIB = 200
NUM_CLASSES = 10
OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ATOL = 1e-4


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class DigitsSplit:
    """Images are float32 [N, 1, 8, 8] in [0, 1]; labels are int64 [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    eval_x: np.ndarray
    eval_y: np.ndarray


def load_split(seed: int = SEED) -> DigitsSplit:
    """Shuffle the digits with a fixed seed and split them.

    The first ``NUM_EVAL`` shuffled samples are held out for evaluation; the
    rest are used for training, and the first ``NUM_CALIB`` training samples
    double as calibration data.
    """
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    eval_idx, train_idx = order[:NUM_EVAL], order[NUM_EVAL:]
    return DigitsSplit(
        train_x=images[train_idx],
        train_y=labels[train_idx],
        calib_x=images[train_idx[:NUM_CALIB]],
        eval_x=images[eval_idx],
        eval_y=labels[eval_idx],
    )


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


class DigitsCNN(nn.Module):
    """Conv+BN+ReLU blocks, a residual Add, max-pooling and an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = self._conv_bn_relu(1, 32)
        self.block2 = self._conv_bn_relu(32, 64)
        self.pool = nn.MaxPool2d(2)
        self.block3 = self._conv_bn_relu(64, 64)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, NUM_CLASSES),
        )

    @staticmethod
    def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block2(self.block1(x)))
        x = x + self.block3(x)
        return self.head(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with plain tensor ops.

    Reshapes use ``-1`` for the batch axis and the static token count, so the
    exported graph has constant Reshape shapes instead of Shape/Gather chains.
    """

    def __init__(self, dim: int, num_heads: int, num_tokens: int) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        self.head_dim = dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, self.num_tokens, self.num_heads, self.head_dim)
        return x.transpose(1, 2)  # [batch, heads, tokens, head_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self._split_heads(self.q(x))
        k = self._split_heads(self.k(x))
        v = self._split_heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2)
        return self.out(ctx.reshape(-1, self.num_tokens, self.dim))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, num_tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Linear(mlp_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    """Tiny ViT: 2x2 patches (16 tokens) + CLS token, 4 encoder blocks."""

    def __init__(self, dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_dim: int = 512) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=2, stride=2)
        num_patches = (8 // 2) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(dim, num_heads, mlp_dim, num_patches + 1) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [batch, 16, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class DigitsMLP(nn.Module):
    """MLP on the 64 flattened pixel features (exports as Gemm nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 512),
            nn.ReLU(),
            nn.Linear(512, 256),
            nn.ReLU(),
            nn.Linear(256, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- #
# Specs
# --------------------------------------------------------------------------- #


def images_as_is(x: np.ndarray) -> np.ndarray:
    return x


def images_flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    to_input: Callable[[np.ndarray], np.ndarray]  # [N,1,8,8] -> model input
    epochs: int
    lr: float
    weight_decay: float
    keep_batchnorm: bool = False  # export without folding BN into Conv
    required_ops: tuple[str, ...] = ()


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="digits_cnn",
        build=DigitsCNN,
        to_input=images_as_is,
        epochs=30,
        lr=2e-3,
        weight_decay=1e-4,
        keep_batchnorm=True,
        required_ops=("Conv", "BatchNormalization"),
    ),
    ModelSpec(
        name="digits_vit",
        build=DigitsViT,
        to_input=images_as_is,
        epochs=100,
        lr=2e-3,
        weight_decay=5e-2,
        required_ops=("MatMul", "Softmax", "LayerNormalization"),
    ),
    ModelSpec(
        name="digits_mlp",
        build=DigitsMLP,
        to_input=images_flat,
        epochs=40,
        lr=1e-3,
        weight_decay=1e-4,
        required_ops=("Gemm",),
    ),
)


# --------------------------------------------------------------------------- #
# Training and evaluation
# --------------------------------------------------------------------------- #


def set_determinism(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(spec: ModelSpec, x: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
    """Train with AdamW and a one-cycle LR schedule; returns the model in eval mode."""
    set_determinism(seed)
    model = spec.build()
    inputs = torch.from_numpy(spec.to_input(x))
    targets = torch.from_numpy(y)
    batch_size = 64
    steps_per_epoch = math.ceil(len(targets) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=spec.lr,
        total_steps=spec.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(targets), generator=generator)
        for start in range(0, len(targets), batch_size):
            idx = perm[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[idx]), targets[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x)).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- #
# Export and verification
# --------------------------------------------------------------------------- #


def export_onnx(spec: ModelSpec, model: nn.Module, example: np.ndarray, path: Path) -> None:
    """Export with the TorchScript exporter, then check and clean the graph."""
    if spec.keep_batchnorm:
        # TrainingMode.EVAL runs a peephole pass that folds BN into Conv;
        # PRESERVE (model already in eval mode) keeps inference-mode BN nodes.
        training = torch.onnx.TrainingMode.PRESERVE
        constant_folding = False
    else:
        training = torch.onnx.TrainingMode.EVAL
        constant_folding = True
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # dynamo=False is deliberate: the legacy exporter gives the plain graphs
        # (Gemm, unfused BatchNormalization) that quantcli's tests rely on.
        warnings.filterwarnings(
            "ignore",
            message="You are using the legacy TorchScript",
            category=DeprecationWarning,
        )
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=training,
            do_constant_folding=constant_folding,
        )
    proto = onnx.load(str(path))
    proto.doc_string = ""
    for node in proto.graph.node:
        node.doc_string = ""
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def op_counts(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


# --------------------------------------------------------------------------- #
# Calibration / eval data
# --------------------------------------------------------------------------- #


def write_samples(directory: Path, x: np.ndarray) -> None:
    """One ``sample_NNNN.npz`` per sample, batch dimension of 1 kept."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("sample_*.npz"), *directory.glob("labels.npy")]:
        old.unlink()
    for i, sample in enumerate(x):
        array = np.ascontiguousarray(sample[None], dtype=np.float32)
        np.savez_compressed(directory / f"sample_{i:04d}.npz", **{INPUT_NAME: array})


def write_data(spec: ModelSpec, split: DigitsSplit) -> None:
    root = DATA_DIR / spec.name
    write_samples(root / "calib", spec.to_input(split.calib_x))
    write_samples(root / "eval", spec.to_input(split.eval_x))
    np.save(root / "eval" / "labels.npy", split.eval_y.astype(np.int64))


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Result:
    name: str
    params: int
    size_bytes: int
    torch_acc: float
    ort_acc: float
    max_abs_diff: float
    train_seconds: float
    ops: Counter[str]


def build_one(spec: ModelSpec, split: DigitsSplit) -> Result:
    started = time.perf_counter()
    model = train(spec, split.train_x, split.train_y, seed=SEED)
    train_seconds = time.perf_counter() - started
    eval_x = spec.to_input(split.eval_x)
    path = MODELS_DIR / f"{spec.name}.onnx"
    export_onnx(spec, model, eval_x[:2], path)

    ops = op_counts(path)
    missing = [op for op in spec.required_ops if op not in ops]
    assert not missing, f"{spec.name}: exported graph lacks {missing}: {dict(ops)}"

    expected = torch_logits(model, eval_x)
    actual = ort_logits(path, eval_x)
    max_diff = float(np.abs(expected - actual).max())
    assert np.allclose(expected, actual, atol=ATOL, rtol=0), (
        f"{spec.name}: onnxruntime differs from torch by {max_diff:g}"
    )
    single = ort_logits(path, eval_x[:1])  # batch axis really is dynamic
    assert single.shape == (1, NUM_CLASSES)

    write_data(spec, split)
    return Result(
        name=spec.name,
        params=count_params(model),
        size_bytes=path.stat().st_size,
        torch_acc=accuracy(expected, split.eval_y),
        ort_acc=accuracy(actual, split.eval_y),
        max_abs_diff=max_diff,
        train_seconds=train_seconds,
        ops=ops,
    )


def print_report(results: list[Result]) -> None:
    header = (
        f"{'model':<12} {'params':>8} {'onnx size':>12} {'torch acc':>9} {'ort acc':>8} {'max|diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<12} {r.params:>8,} {r.size_bytes:>12,} "
            f"{r.torch_acc:>9.4f} {r.ort_acc:>8.4f} {r.max_abs_diff:>10.2e}"
        )
    print()
    for r in results:
        ops = ", ".join(f"{op}={n}" for op, n in sorted(r.ops.items()))
        print(f"{r.name} ops ({sum(r.ops.values())} nodes): {ops}")


def main() -> None:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    split = load_split()
    print(
        f"digits split: train={len(split.train_y)} "
        f"(calib={len(split.calib_x)} of them), eval={len(split.eval_y)}"
    )
    results = []
    for spec in SPECS:
        result = build_one(spec, split)
        print(
            f"  built {spec.name}: trained in {result.train_seconds:.1f}s, "
            f"held-out accuracy {result.ort_acc:.4f}"
        )
        results.append(result)
    print()
    print_report(results)


if __name__ == "__main__":
    main()
