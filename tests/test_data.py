"""Sample readers: batched arrays and image folders give the same samples as the explicit form."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, SAMPLES

from quantcli.api import ConvertOptions, convert
from quantcli.calibration.data import InputSpec, find_samples, iter_samples, list_samples
from quantcli.calibration.images import ImagePreprocess
from quantcli.errors import BadDataError, UsageError


def test_batched_file_calibrates_exactly_like_per_file_samples(tmp_path) -> None:
    files = list_samples(DATA / "digits_cnn" / "calib")[:40]
    batch_dir = tmp_path / "batched"
    batch_dir.mkdir()
    np.savez(batch_dir / "batch.npz", input=np.concatenate([np.load(f)["input"] for f in files]))
    common = dict(model=SAMPLES / "digits_cnn.onnx", eval=DATA / "digits_cnn" / "eval", eval_samples=20)
    per_file_dir = tmp_path / "per_file"
    per_file_dir.mkdir()
    for f in files:
        (per_file_dir / f.name).write_bytes(f.read_bytes())
    a = convert(ConvertOptions(output=tmp_path / "a.onnx", calib=per_file_dir, **common))
    b = convert(ConvertOptions(output=tmp_path / "b.onnx", calib=batch_dir, **common))
    assert a.calibration_samples == b.calibration_samples == 40
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_batched_rows_are_named_in_errors(tmp_path) -> None:
    x = np.zeros((5, 1, 8, 8), np.float32)
    x[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "batch.npz", input=x)
    specs = InputSpec.from_model(__import__("onnx").load(SAMPLES / "digits_cnn.onnx"))
    refs = find_samples(tmp_path)
    assert len(refs) == 5
    with pytest.raises(BadDataError, match=r"batch\.npz\[3\].*NaN"):
        list(iter_samples(refs, specs))


def test_preprocess_spec_parsing() -> None:
    p = ImagePreprocess.parse(
        "resize=256,crop=224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,scale=1/255"
    )
    assert (p.resize, p.crop, p.layout) == (256, 224, "NCHW")
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)
    assert p.scale == pytest.approx(1 / 255)
    for bad in ("resize=abc", "colour=1", "layout=CHW", "mean=1,2", "junk"):
        with pytest.raises(UsageError):
            ImagePreprocess.parse(bad)


def test_image_folder_is_preprocessed_as_declared(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    spec = ImagePreprocess.parse("crop=24,mean=0.5,0.5,0.5,std=0.25,0.25,0.25,layout=NCHW,scale=1/255")
    specs = [InputSpec("image", np.dtype(np.float32), ("batch", 3, 24, 24))]
    (x,) = (feeds["image"] for feeds in iter_samples(find_samples(tmp_path, preprocess=spec), specs, spec))
    expected = ((pixels[3:27, 8:32].astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(BadDataError, match="--calib-preprocess"):
        find_samples(tmp_path)
