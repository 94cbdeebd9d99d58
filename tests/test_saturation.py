"""INT8 weights that x86 U8S8 kernels without VNNI cannot saturate (quantize/saturation.py).

The safety is proved without an AVX2 machine: a numpy emulation of VPMADDUBSW (adjacent u8 x s8
products summed into a saturating int16, then int32) run on real layers, and a property check on
every converted model. On a real x86 CPU without VNNI, one more test checks the emulation's pairing
against onnxruntime's own kernels.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, SAMPLE_NAMES, SAMPLES, convert_sample, quantcli
from onnx import TensorProto, helper, numpy_helper

from quantcli.cpu import _detected, host_features, host_target, parse_features
from quantcli.inspect.saturation import LIMIT_8BIT, u8s8_layers
from quantcli.quantize.plan import QuantPlan
from quantcli.quantize.saturation import (
    CONV,
    KN,
    NK,
    fit_pairs,
    fit_scales,
    kernel_rows,
    pair_limit,
    quantize_weight,
    saturating_pairs,
)
from quantcli.verify import exact_kernel_model

# ---------------------------------------------------------------- the emulation of the AVX2 kernel


def vpmaddubsw_gemm(a: np.ndarray, w_rows: np.ndarray) -> np.ndarray:
    """[M, K] u8 codes x [N, K] s8 weights (K in kernel order) as MLAS's AVX2 U8S8 kernel sums
    them: products of K indices (2j, 2j+1) added into a saturating int16, those added in int32."""
    prod = a.astype(np.int32)[:, None, :] * w_rows.astype(np.int32)[None, :, :]  # [M, N, K]
    k = prod.shape[2] // 2 * 2
    pairs = np.clip(prod[:, :, :k:2] + prod[:, :, 1:k:2], -32768, 32767)
    return pairs.sum(axis=2) + prod[:, :, k:].sum(axis=2)


def exact_gemm(a: np.ndarray, w_rows: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ w_rows.astype(np.int64).T


def conv_patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """[C, H, W] codes -> [positions, kh * kw * C], each patch flattened channels-last (the order
    of kernel_rows(..., CONV)): no padding, stride 1."""
    c, h, w = x.shape
    rows = [
        x[:, i : i + kh, j : j + kw].transpose(1, 2, 0).reshape(-1)
        for i in range(h - kh + 1)
        for j in range(w - kw + 1)
    ]
    return np.stack(rows)


def test_emulated_kernel_pairs_adjacent_k_and_saturates() -> None:
    a = np.full((1, 4), 255, np.uint8)
    w = np.array([[100, 100, 0, 0], [100, 0, 100, 0]], np.int8)  # paired / not paired
    got, exact = vpmaddubsw_gemm(a, w), exact_gemm(a, w)
    assert got[0, 0] == 32767 and exact[0, 0] == 51000
    assert got[0, 1] == exact[0, 1] == 51000


# ---------------------------------------------------------------- converted models


@pytest.fixture(scope="module")
def full_range(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("full_range")
    return {name: convert_sample(name, out, "vnni", target_cpu="vnni") for name in SAMPLE_NAMES}


def _weights(c) -> dict[str, tuple[np.ndarray, object]]:  # noqa: ANN001
    """INT8 weight name -> (its float values in the stored order, its TensorParams) of a conversion."""
    plan = QuantPlan.load(c.plan)
    model = onnx.load(c.output)
    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(c.source).graph.initializer}
    stored = {t.name.removesuffix("_quantized"): numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        name: (floats[name], p, stored[name])
        for name, p in plan.tensors.items()
        if p.role == "weight" and name in floats and name in stored
    }


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_no_pair_of_a_default_model_can_saturate(converted, name: str) -> None:
    layers = u8s8_layers(onnx.load(converted[name].output).graph)
    assert layers and all(layer.checked for layer in layers)
    assert [layer.node for layer in layers if layer.pairs_over] == []
    assert max(layer.worst_pair for layer in layers) <= LIMIT_8BIT


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_full_range_models_have_pairs_over_the_limit(full_range, name: str) -> None:
    layers = u8s8_layers(onnx.load(full_range[name].output).graph)
    assert sum(layer.pairs_over for layer in layers) > 50  # what AVX2 CPUs get without the target


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_emulated_avx2_kernel_breaks_full_range_and_matches_exact_when_safe(
    converted, full_range, name: str
) -> None:
    """Every INT8 Conv/Gemm weight of the model, on worst-case (all 255) and random codes."""
    rng = np.random.default_rng(0)
    for tag, conversion in (("safe", converted[name]), ("full", full_range[name])):
        broken = 0
        for _, _, q in _weights(conversion).values():
            if q.dtype == np.uint8:
                continue  # a first/last layer on the exact U8U8 kernel (quantize/exact_layers.py)
            layout = CONV if q.ndim == 4 else NK  # the sample models' Gemms are transB=1
            rows = kernel_rows(q, layout)
            if layout == CONV:
                x = rng.integers(0, 256, (q.shape[1], q.shape[2] + 2, q.shape[3] + 2), dtype=np.uint8)
                a = np.concatenate(
                    [conv_patches(x, q.shape[2], q.shape[3]), np.full((1, rows.shape[1]), 255)]
                )
            else:
                a = np.concatenate(
                    [rng.integers(0, 256, (8, rows.shape[1])), np.full((1, rows.shape[1]), 255)]
                )
            emulated, exact = vpmaddubsw_gemm(a, rows), exact_gemm(a, rows)
            if tag == "safe":
                np.testing.assert_array_equal(emulated, exact)
            else:
                broken += int(np.count_nonzero(emulated != exact))
        if tag == "full":
            assert broken > 100


def test_random_weights_never_saturate_after_the_fit() -> None:
    """Property: for any weight, scale and importance, the fitted integers keep every pair within
    the limit, and fit_scales never narrows a scale."""
    rng = np.random.default_rng(1)
    from quantcli.quantize.params import QType, weight_qparams
    from quantcli.quantize.plan import TensorParams

    for trial in range(60):
        layout = (CONV, KN, NK)[trial % 3]
        shape = {
            CONV: (int(rng.integers(1, 9)), int(rng.integers(1, 7)), 3, 3),
            KN: (int(rng.integers(2, 40)), int(rng.integers(1, 9))),
            NK: (int(rng.integers(1, 9)), int(rng.integers(2, 40))),
        }[layout]
        w = rng.standard_normal(shape) * rng.choice([0.01, 1.0, 30.0])
        if trial % 5 == 0:
            w = np.abs(w)  # all one sign: the hardest case
        axis = {CONV: 0, KN: 1, NK: 0}[layout] if trial % 4 else None
        scale, _ = weight_qparams(w, axis)
        limit = pair_limit(int(rng.integers(128, 256)))
        channels = shape[1] if layout in (CONV, NK) else shape[0]
        energy = rng.random(channels) * (rng.random(channels) > 0.3) if trial % 2 else None
        fitted = fit_scales(w, scale, axis, layout, limit, energy)
        assert np.all(np.asarray(fitted) >= np.asarray(scale) * (1 - 1e-6))
        params = TensorParams(
            "weight",
            QType.INT8,
            np.atleast_1d(fitted).tolist(),
            [0] * np.atleast_1d(fitted).size,
            axis,
            pair_limit=limit,
            pair_layout=layout,
            pair_weights=None if energy is None else energy.tolist(),
        )
        q = quantize_weight(w, params)
        assert saturating_pairs(q, layout, limit) == 0
        assert np.abs(q.astype(np.int32)).max() <= 127


def test_pair_fit_is_the_least_squares_integer_point() -> None:
    rng = np.random.default_rng(2)
    limit = 128
    for _ in range(200):
        real = rng.uniform(0, 127, 2)
        if real.sum() <= limit + 1:
            continue
        weights = rng.uniform(0.01, 1.0, 2)
        got = fit_pairs(np.round(real).reshape(1, 2), real.reshape(1, 2), limit, weights)[0]

        def cost(ab, w=weights, r=real):  # noqa: ANN001, ANN202
            return w[0] * (ab[0] - r[0]) ** 2 + w[1] * (ab[1] - r[1]) ** 2

        best = min((ab for ab in itertools.product(range(128), repeat=2) if sum(ab) <= limit), key=cost)
        assert cost(got) <= cost(best) + 1e-9


# ---------------------------------------------------------------- the real kernels, where available


def _real_host_without_vnni() -> bool:
    return _detected().u8s8_saturates is True


def _on_max_codes(
    op: str, w: np.ndarray, x_shape: list[int], out_shape: list[int], **attrs: int
) -> np.ndarray:
    """Run `op` on INT8 weights `w` (per output channel, scale 1) through onnxruntime's fused
    integer kernel, every input code 255 (scale 1, zero point 0), the output quantized at scale 256;
    the output flattened."""
    n = w.shape[1 if op == "MatMul" else 0]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s1", "z0"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s1", "z0"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1 if op == "MatMul" else 0),
        helper.make_node(op, ["xd", "wd"], ["y"], **attrs),
        helper.make_node("QuantizeLinear", ["y", "s256", "z0"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s256", "z0"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "s1"),
        numpy_helper.from_array(np.array(256.0, np.float32), "s256"),
        numpy_helper.from_array(np.array(0, np.uint8), "z0"),
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(np.ones(n, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
    ]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.full(x_shape, 255.0, np.float32)})[0].reshape(-1)


@pytest.mark.skipif(not _real_host_without_vnni(), reason="needs an x86 CPU without VNNI")
@pytest.mark.parametrize("op", ["MatMul", "Conv"])
def test_onnxruntime_pairs_what_the_emulation_pairs(op: str) -> None:
    """Each output channel holds two weights of 100 against codes of 255: it saturates exactly when
    the emulation says the two are paired (adjacent K in kernel order)."""
    if op == "MatMul":
        k = 9
        combos = list(itertools.combinations(range(k), 2))
        w = np.zeros((k, len(combos)), np.int8)
        for n, (p, q) in enumerate(combos):
            w[[p, q], n] = 100
        x_shape, rows = [2, k], kernel_rows(w, KN)
    else:
        ci, kh, kw = 3, 3, 3
        combos = list(itertools.combinations(range(ci * kh * kw), 2))
        w = np.zeros((len(combos), ci, kh, kw), np.int8)
        for o, (p, q) in enumerate(combos):
            w[o].reshape(-1)[[p, q]] = 100
        x_shape, rows = [1, ci, kh, kw], kernel_rows(w, CONV)
    n = rows.shape[0]
    out_shape = [x_shape[0], n] if op == "MatMul" else [1, n, 1, 1]
    got = _on_max_codes(op, w, x_shape, out_shape)[:n]  # MatMul: the first of its identical rows
    emulated = vpmaddubsw_gemm(np.full((1, rows.shape[1]), 255), rows)[0]
    np.testing.assert_allclose(got, np.minimum(np.round(emulated / 256), 255) * 256)


# ---------------------------------------------------------------- exact kernels, target, features


@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit"])
def test_exact_kernel_copy_computes_what_the_safe_model_computes(converted, name: str) -> None:
    model = onnx.load(converted[name].output)
    exact = exact_kernel_model(model)
    assert exact is not None and onnx.checker.check_model(exact, full_check=True) is None

    def uint8_weights(m: onnx.ModelProto) -> int:
        return sum(t.data_type == TensorProto.UINT8 and len(t.dims) >= 2 for t in m.graph.initializer)

    assert uint8_weights(exact) == uint8_weights(model) + len(u8s8_layers(model.graph))
    a = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(exact.SerializeToString(), providers=["CPUExecutionProvider"])
    for f in sorted((DATA / name / "eval").glob("*.npz"))[:20]:
        feeds = dict(np.load(f))
        np.testing.assert_allclose(a.run(None, feeds)[0], b.run(None, feeds)[0], rtol=0, atol=1e-5)


def test_target_is_recorded_in_the_plan_and_the_model(converted, full_range) -> None:
    for c, target in ((converted["digits_cnn"], "any"), (full_range["digits_cnn"], "vnni")):
        assert QuantPlan.load(c.plan).config.target_cpu == target
        meta = {p.key: p.value for p in onnx.load(c.output).metadata_props}
        assert meta["quantcli.target_cpu"] == target
        assert c.result.saturation.target_cpu == target
    assert converted["digits_cnn"].result.saturation.pairs_over == 0
    params = [p for _, p, _ in _weights(converted["digits_cnn"]).values()]
    assert {p.pair_limit for p in params if p.dtype.value == "int8"} == {128}
    # the first Conv and the last Gemm keep full-range weights on the exact U8U8 kernel
    uint8 = [p for p in params if p.dtype.value == "uint8"]
    assert len(uint8) == 2 and all(p.pair_limit is None and set(p.zero_point) == {128} for p in uint8)


def test_first_and_last_layers_go_exact_within_the_mac_budget(converted) -> None:
    from quantcli.quantize.exact_layers import EXACT_MAC_SHARE

    for name, expected in (
        ("digits_cnn", {"/block1/block1.0/Conv", "/head/head.3/Gemm"}),
        ("digits_mlp", {"/net/net.4/Gemm"}),  # its first Gemm is 20% of the MACs: too costly
        ("digits_vit", {"/patch_embed/Conv", "/head/Gemm"}),
    ):
        nodes = converted[name].result.nodes
        exact = {n.name for n in nodes if "UINT8 weights" in n.reason}
        assert exact == expected, name
        shares = [float(n.reason.rsplit("; ", 1)[1].split("%")[0]) / 100 for n in nodes if n.name in exact]
        assert sum(shares) <= EXACT_MAC_SHARE


def test_default_accuracy_on_exact_kernels_is_close_to_full_range(converted, full_range) -> None:
    """The cost of the pair limit, measured on exact kernels (what full-range models give on VNNI)."""
    for name in SAMPLE_NAMES:
        safe = converted[name].result.agreement.outputs[0]
        exact = full_range[name].result.kernels.exact
        full = (exact or full_range[name].result.agreement).outputs[0]
        assert safe.sqnr_db > full.sqnr_db - 2.0, name
        assert safe.top1_agreement >= full.top1_agreement - 0.01, name


def test_host_features_are_an_input(monkeypatch) -> None:
    assert host_features().kind == "avx2"  # pinned by conftest
    monkeypatch.setenv("QUANTCLI_CPU_FEATURES", "avx2 avx512f avx512_vnni")
    f = host_features()
    assert f.kind == "vnni" and f.u8s8_saturates is False and f.source == "QUANTCLI_CPU_FEATURES"
    assert parse_features("arm", "x").u8s8_saturates is False
    assert parse_features("avx2,avx512f,avx512bw", "x").kind == "avx512"
    assert parse_features("avx512f", "x").u8s8_saturates is True


@pytest.mark.parametrize(
    ("features", "target"),
    [("avx2", "avx2"), ("avx2 avx512f avx512bw", "avx2"), ("avx2 avx512_vnni", "vnni"), ("aarch64", "arm")],
)
def test_target_host_is_this_cpus_kind_recorded_as_that_kind(
    tmp_path: Path, monkeypatch, features: str, target: str
) -> None:
    """--target-cpu host resolves to the converting CPU's kind when converting: the plan and the
    model record that kind (a replay elsewhere makes the same model), and the weights follow it:
    full range on VNNI and ARM, within the pair limit on x86 without VNNI."""
    monkeypatch.setenv("QUANTCLI_CPU_FEATURES", features)
    assert host_target() == target
    c = convert_sample("digits_mlp", tmp_path, "host", target_cpu="host", speed_plan=False)
    assert QuantPlan.load(c.plan).config.target_cpu == target == c.result.saturation.target_cpu
    assert {p.key: p.value for p in onnx.load(c.output).metadata_props}["quantcli.target_cpu"] == target
    limits = {p.pair_limit for _, p, _ in _weights(c).values() if p.dtype.value == "int8"}
    assert limits == ({None} if target in ("vnni", "arm") else {128})


def test_full_range_on_a_cpu_without_vnni_is_measured_on_both_kernels(full_range) -> None:
    k = full_range["digits_cnn"].result.kernels
    assert k.host["kind"] == "avx2" and not k.same_as_exact and k.exact is not None
    codes = [getattr(w, "code", None) for w in full_range["digits_cnn"].result.warnings]
    assert "u8s8-saturation" in codes
    if _real_host_without_vnni():  # the figures really differ only on such a CPU
        assert "kernel-mismatch" in codes


def test_vnni_host_measures_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QUANTCLI_CPU_FEATURES", "avx512_vnni")
    c = convert_sample("digits_mlp", tmp_path, "vnni_host", target_cpu="vnni")
    assert c.result.kernels.same_as_exact and c.result.kernels.exact is None
    assert "int32" in c.result.kernels.reason


def test_cli_target_json_and_inspect_codes(full_range, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = quantcli(
        "convert", SAMPLES / "digits_mlp.onnx", "--calib", DATA / "digits_mlp" / "calib",
        "--calib-samples", "32", "--eval-samples", "20", "-o", out, "--json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["target_cpu"] == "any" and data["saturation"]["pairs_over_limit"] == 0
    assert data["kernels"]["same_as_exact"] and data["kernels"]["host"]["kind"] == "avx2"
    assert "u8s8-saturation" not in data["warning_codes"]
    proc = quantcli("inspect", full_range["digits_mlp"].output, "--json", cwd=tmp_path)
    codes = [f["code"] for f in json.loads(proc.stdout)["findings"]]
    assert codes.count("u8s8-saturation") == 3  # one per Gemm, on any host
    proc = quantcli("inspect", out, "--json", cwd=tmp_path)
    assert "u8s8-saturation" not in [f["code"] for f in json.loads(proc.stdout)["findings"]]
    bad = quantcli(
        "convert",
        SAMPLES / "digits_mlp.onnx",
        "--mode",
        "fp16",
        "--target-cpu",
        "vnni",
        "-o",
        out,
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "--target-cpu" in bad.stderr


def test_dynamic_mode_weights_are_safe_too(converted_modes) -> None:
    layers = u8s8_layers(onnx.load(converted_modes("digits_vit", "dynamic").output).graph)
    assert layers and all(layer.op_type == "MatMulInteger" for layer in layers)
    assert sum(layer.pairs_over for layer in layers) == 0


def test_a_plan_replays_its_own_target(converted, tmp_path: Path) -> None:
    from quantcli.api import ConvertOptions, convert
    from quantcli.errors import UsageError

    c = converted["digits_cnn"]
    with pytest.raises(UsageError, match="--target-cpu vnni contradicts the plan"):
        convert(ConvertOptions(model=c.source, output=tmp_path / "o.onnx", plan=c.plan, target_cpu="vnni"))
    replay = convert(ConvertOptions(model=c.source, output=tmp_path / "r.onnx", plan=c.plan))
    assert (
        replay.saturation.target_cpu == "any" and (tmp_path / "r.onnx").read_bytes() == c.output.read_bytes()
    )


def test_the_output_does_not_depend_on_the_converting_host(tmp_path: Path, monkeypatch) -> None:
    """The same bytes whatever CPU converts: the host's features decide only what is measured."""
    outputs = []
    for features in ("avx2", "avx2 avx512f avx512_vnni", "arm"):
        monkeypatch.setenv("QUANTCLI_CPU_FEATURES", features)
        c = convert_sample("digits_mlp", tmp_path, features.split()[-1])
        outputs.append((c.output.read_bytes(), c.plan.read_bytes()))
        assert (
            c.result.kernels.host["kind"]
            == {"avx2": "avx2", "avx512_vnni": "vnni", "arm": "arm"}[features.split()[-1]]
        )
    assert outputs[0] == outputs[1] == outputs[2]


def test_json_counts_the_u8s8_and_exact_layers(converted) -> None:
    from quantcli.report.convert import convert_to_dict

    d = convert_to_dict(converted["digits_cnn"].result)
    assert d["saturation"] == {
        "u8s8_layers": 3,
        "exact_u8u8_layers": 2,
        "layers_over_limit": 0,
        "pairs_over_limit": 0,
    }
    assert d["target_cpu"] == "any" and d["warning_codes"] == []


@pytest.mark.skipif(not _real_host_without_vnni(), reason="needs an x86 CPU without VNNI")
def test_depthwise_never_saturates_and_groups_pair_within_a_group() -> None:
    """What rules.pair_layout assumes: a depthwise QLinearConv is exact with full-range weights; a
    grouped one pairs K (kernel position, channel) within each group, as kernel_rows says."""
    depthwise = np.zeros((8, 1, 3, 3), np.int8)
    depthwise[:, 0, 0, :2] = 127  # adjacent in K: 255 * 254 would saturate an int16 pair
    got = _on_max_codes("Conv", depthwise, [1, 8, 3, 3], [1, 8, 1, 1], group=8)
    np.testing.assert_allclose(got, np.round(255 * 254 / 256) * 256)
    grouped = np.zeros((4, 4, 3, 3), np.int8)  # 2 groups of 4 input and 2 output channels
    grouped[0, 0, 0, 0] = grouped[0, 1, 0, 0] = 100  # channels 0 and 1 at one position: paired
    grouped[1, 1, 0, 0] = grouped[1, 2, 0, 0] = 100  # channels 1 and 2: not paired
    grouped[2, 2, 1, 1] = grouped[2, 3, 1, 1] = 100  # paired, in the second group
    grouped[3, 0, 0, 0] = grouped[3, 0, 0, 1] = 100  # one channel, two positions: not paired
    got = _on_max_codes("Conv", grouped, [1, 8, 3, 3], [1, 4, 1, 1], group=2)
    emulated = vpmaddubsw_gemm(np.full((1, 36), 255), kernel_rows(grouped, CONV))[0]
    np.testing.assert_allclose(got, np.minimum(np.round(emulated / 256), 255) * 256)
    assert list(emulated == 2 * 255 * 100) == [False, True, False, True]


@pytest.mark.parametrize(
    "layout, shape, axis",
    [
        ("kn", (300, 700), 1),
        ("kn", (3, 64, 90), 2),
        ("nk", (500, 300), 0),
        ("conv", (96, 16, 3, 3), 0),
        ("kn", (300, 700), None),
    ],
)
def test_weights_fitted_in_slices_are_the_one_pass_integers(
    layout: str, shape: tuple, axis: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quantize_weight fits a big weight a slice of output channels at a time (bounded float64
    temporaries): the integers are those of one pass, and the fit did move some."""
    from quantcli.quantize import saturation as sat
    from quantcli.quantize.params import QType
    from quantcli.quantize.plan import TensorParams

    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32) * rng.uniform(
        0.1, 3, shape[-1] if layout == "kn" else 1
    )
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=reduce) / 127 if axis is not None else np.array([np.abs(w).max() / 127])
    params = TensorParams(
        "weight",
        QType.INT8,
        scale.astype(np.float32).tolist(),
        [0] * scale.size,
        axis,
        None,
        None,
        140,
        layout,
    )
    whole = sat._fitted(w, *params.arrays(), params)
    plain = sat.quantize_weight(w, TensorParams("weight", QType.INT8, params.scale, params.zero_point, axis))
    assert np.count_nonzero(whole != plain) > 0  # the limit bites
    for values in (1 << 10, 1 << 14):
        monkeypatch.setattr(sat, "FIT_VALUES", values)
        assert np.array_equal(sat.quantize_weight(w, params), whole)
