"""Image folders as calibration data, with a declared preprocessing.

The spec is `key=value` pairs separated by commas; a value may itself be a comma-separated list:
    resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,scale=1/255
Order of operations: decode as RGB -> resize the shorter side to `resize` (bilinear) -> centre crop
`crop` x `crop` -> multiply by `scale` -> subtract `mean`, divide by `std` (per channel) -> `layout`
(NCHW or NHWC) -> add a batch axis of 1. Decoding needs Pillow (`pip install quantcli[images]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from quantcli.errors import BadDataError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_KEYS = ("resize", "crop", "mean", "std", "layout", "scale")


@dataclass(frozen=True)
class ImagePreprocess:
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0

    @classmethod
    def parse(cls, spec: str) -> ImagePreprocess:
        """Parse `--calib-preprocess`; a bad spec is a UsageError naming the part at fault."""
        values: dict[str, list[str]] = {}
        key = None
        for token in (t.strip() for t in spec.split(",")):
            if "=" in token:
                key, _, first = token.partition("=")
                key = key.strip().lower()
                if key not in _KEYS:
                    raise UsageError(f"--calib-preprocess: unknown key '{key}' (known: {', '.join(_KEYS)})")
                values[key] = [first.strip()]
            elif key is not None and token:
                values[key].append(token)
            elif token:
                raise UsageError(f"--calib-preprocess: '{token}' is not key=value")
        try:
            kwargs: dict = {}
            for k in ("resize", "crop"):
                if k in values:
                    kwargs[k] = int(values[k][0])
            for k in ("mean", "std"):
                if k in values:
                    kwargs[k] = tuple(float(v) for v in values[k])
            if "scale" in values:
                kwargs["scale"] = float(Fraction(values["scale"][0]))
            if "layout" in values:
                kwargs["layout"] = values["layout"][0].upper()
        except (ValueError, ZeroDivisionError) as exc:
            raise UsageError(f"--calib-preprocess: {exc}") from exc
        result = cls(**kwargs)
        if result.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"--calib-preprocess: layout must be NCHW or NHWC, not {result.layout}")
        if len(result.mean) != 3 or len(result.std) != 3 or 0.0 in result.std:
            raise UsageError("--calib-preprocess: mean and std need 3 values each, std non-zero")
        return result

    def load(self, path: Path) -> np.ndarray:
        """The preprocessed float32 array of one image, with a batch axis of 1."""
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise BadDataError(
                f"{path}: reading images needs Pillow: pip install 'quantcli[images]'"
            ) from exc
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if self.resize:
                    w, h = img.size
                    r = self.resize / min(w, h)
                    img = img.resize((max(1, round(w * r)), max(1, round(h * r))), Image.Resampling.BILINEAR)
                if self.crop:
                    w, h = img.size
                    if self.crop > min(w, h):
                        raise BadDataError(
                            f"{path}: crop {self.crop} is larger than the image ({w}x{h}) after resize"
                        )
                    left, top = (w - self.crop) // 2, (h - self.crop) // 2
                    img = img.crop((left, top, left + self.crop, top + self.crop))
                x = np.asarray(img, dtype=np.float32)
        except BadDataError:
            raise
        except OSError as exc:
            raise BadDataError(f"{path}: cannot read image: {exc}") from exc
        x = (x * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=np.float32)
