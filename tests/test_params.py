"""Scale/zero-point maths against hand-computed values and the quantization error bound."""

from __future__ import annotations

import numpy as np
import pytest

from quantcli.quantize.params import QType, calculate_qparams, quantize_array, weight_qparams


def test_uint8_asymmetric_range_maps_ends_exactly() -> None:
    scale, zp = calculate_qparams(-1.0, 3.0, QType.UINT8, symmetric=False)
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert int(zp) == 64  # round(1 / (4/255)) = round(63.75)
    q = quantize_array(np.array([-1.0, 0.0, 3.0], np.float32), scale, zp, QType.UINT8, None, False)
    assert q.tolist() == [0, 64, 255]


def test_range_always_contains_zero() -> None:
    scale, zp = calculate_qparams(2.0, 6.0, QType.UINT8, symmetric=False)
    assert int(zp) == 0 and scale == pytest.approx(6.0 / 255, rel=1e-6)


def test_degenerate_range_gives_unit_scale() -> None:
    scale, zp = calculate_qparams(0.0, 0.0, QType.UINT8, symmetric=False)
    assert float(scale) == 1.0 and int(zp) == 0
    scale, zp = calculate_qparams(0.0, 0.0, QType.INT8, symmetric=True)
    assert float(scale) == 1.0 and int(zp) == 0


def test_int16_asymmetric_range_maps_ends_exactly() -> None:
    scale, zp = calculate_qparams(-1.0, 3.0, QType.INT16, symmetric=False)
    assert scale == pytest.approx(4.0 / 65535, rel=1e-6)
    assert zp.dtype == np.int16 and int(zp) == -16384  # round(-32768 + 1 / (4/65535)) = round(-16384.25)
    q = quantize_array(np.array([-1.0, 0.0, 3.0], np.float32), scale, zp, QType.INT16, None, False)
    assert q.tolist() == [-32768, -16384, 32767]
    # A one-sided range (after ReLU) starts at the type minimum, so all 65536 levels cover it.
    scale, zp = calculate_qparams(0.0, 6.0, QType.INT16, symmetric=False)
    assert int(zp) == -32768 and scale == pytest.approx(6.0 / 65535, rel=1e-6)
    assert QType.INT16.bounds(symmetric=True) == (-32767, 32767) and QType.INT16.bits == 16


def test_symmetric_int8_weight_per_channel() -> None:
    w = np.array([[0.5, -1.0], [2.0, 0.1]], np.float32)
    scale, zp = weight_qparams(w, axis=0)
    np.testing.assert_allclose(scale, [1.0 / 127, 2.0 / 127], rtol=1e-6)
    assert zp.dtype == np.int8 and not zp.any()
    q = quantize_array(w, scale, zp, QType.INT8, axis=0)
    assert q.tolist() == [[64, -127], [127, 6]]


def test_quantization_error_is_at_most_half_a_step() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 3, 3)).astype(np.float32) * rng.uniform(0.01, 10, size=(16, 1, 1, 1))
    scale, zp = weight_qparams(x.astype(np.float32), axis=0)
    q = quantize_array(x, scale, zp, QType.INT8, axis=0)
    back = q.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(back - x) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)


def test_mse_weight_clipping_never_worse_and_helps_heavy_tails() -> None:
    from quantcli.quantize.params import weight_qparams_mse

    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 4096)).astype(np.float32)
    w[:4] = rng.laplace(size=(4, 4096))  # heavy tails in half of the channels

    def channel_errors(scale: np.ndarray) -> np.ndarray:
        q = quantize_array(w, scale, np.zeros(8, np.int8), QType.INT8, axis=0)
        return ((q * scale[:, None] - w) ** 2).sum(axis=1)

    minmax, _ = weight_qparams(w, axis=0)
    mse, zp = weight_qparams_mse(w, axis=0)
    assert not zp.any() and mse.shape == (8,)
    assert np.all(channel_errors(mse) <= channel_errors(minmax) + 1e-9)
    assert np.all(channel_errors(mse)[:4] < 0.99 * channel_errors(minmax)[:4])  # ~3% on INT8 here


def test_reduce_range_uses_seven_bit_weights() -> None:
    w = np.random.default_rng(2).normal(size=(4, 32)).astype(np.float32)
    scale, zp = weight_qparams(w, axis=0, reduce_range=True)
    q = quantize_array(w, scale, zp, QType.INT8, axis=0)
    assert np.abs(q).max() == 63


def test_vnni_detection_answers_on_linux_x86() -> None:
    import platform

    from quantcli.cpu import _detected  # the machine's own flags, not the tests' pinned override

    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert _detected().arch == "x86_64" and _detected().vnni in (True, False)
    else:
        assert _detected().u8s8_saturates is not True
