"""Image folders as calibration data, with a declared preprocessing.

The spec is `key=value` pairs separated by commas; a value may itself be a comma-separated list:
    resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,scale=1/255
Order of operations: decode (RGB; grayscale for a model input of 1 channel, RGBA for 4) -> resize the shorter side to `resize` (bilinear) -> centre crop
`crop` x `crop` -> multiply by `scale` -> subtract `mean`, divide by `std` (per channel: one value
for every channel, or one per channel) -> `layout` (NCHW or NHWC) -> add a batch axis of 1.
The channel count comes from the model's input (`fitted`). Decoding needs Pillow (`pip install quantcli[images]`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from quantcli.errors import BadDataError, UsageError
from quantcli.text import count

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> Pillow mode
_KEYS = ("resize", "crop", "mean", "std", "layout", "scale")


@dataclass(frozen=True)
class ImagePreprocess:
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    scale: float = 1.0 / 255.0
    channels: int = 3  # decoded as grayscale (1), RGB (3) or RGBA (4): the model input's channels

    @classmethod
    def parse(cls, spec: str, option: str = "--calib-preprocess") -> ImagePreprocess:
        """Parse `--calib-preprocess` (or compare's `--data-preprocess`); a bad spec is a UsageError
        naming the part at fault."""
        values: dict[str, list[str]] = {}
        key = None
        for token in (t.strip() for t in spec.split(",")):
            if "=" in token:
                key, _, first = token.partition("=")
                key = key.strip().lower()
                if key not in _KEYS:
                    raise UsageError(f"{option}: unknown key '{key}' (known: {', '.join(_KEYS)})")
                values[key] = [first.strip()]
            elif key is not None and token:
                values[key].append(token)
            elif token:
                raise UsageError(f"{option}: '{token}' is not key=value")
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
            raise UsageError(f"{option}: {exc}") from exc
        result = cls(**kwargs)
        if result.layout not in ("NCHW", "NHWC"):
            raise UsageError(f"{option}: layout must be NCHW or NHWC, not {result.layout}")
        if 0.0 in result.std:
            raise UsageError(f"{option}: std must be non-zero")
        if len(result.mean) not in (1, 3, 4) or len(result.std) not in (1, 3, 4):
            raise UsageError(f"{option}: mean and std take 1 value, or one per channel (3 or 4)")
        return result

    def fitted(
        self, shape: tuple[int | str | None, ...] | None, option: str = "--calib-preprocess"
    ) -> ImagePreprocess:
        """The spec for a model input of this shape: its channel count (NCHW: dim 1, NHWC: the last),
        checked against mean and std. An input without a known channel count gets RGB."""
        channels = 3
        if shape is not None and len(shape) == 4:
            dim = shape[1] if self.layout == "NCHW" else shape[3]
            if isinstance(dim, int) and dim > 0:
                channels = dim
        if channels not in _MODES:
            raise UsageError(
                f"{option}: the model's input has {channels} channels in {self.layout}; images decode to "
                "1 (grayscale), 3 (RGB) or 4 (RGBA): check layout="
            )
        for name in ("mean", "std"):
            n = len(getattr(self, name))
            if n not in (1, channels):
                raise UsageError(
                    f"{option}: {name} has {n} values, the model's input takes {count(channels, 'channel')} "
                    f"({self.layout}): give 1 value or {channels}"
                )
        return replace(self, channels=channels)

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
                img = img.convert(_MODES[self.channels])
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
                if x.ndim == 2:  # grayscale: one channel axis, like RGB's
                    x = x[..., None]
        except BadDataError:
            raise
        except OSError as exc:
            raise BadDataError(f"{path}: cannot read image: {exc}") from exc
        x = (x * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=np.float32)
