"""Measure a cost table for the speed-aware planner (quantize/speed.py): `quantcli measure-costs`.

For each op class (pointwise, dense 3x3, depthwise 3x3/5x5, grouped Conv; MatMul) and shape on a
grid, it times in onnxruntime (CPU provider, 1 intra-op thread, all graph optimizations, batch 1):

- a chain of 1 and of 4 identical float nodes, and the same chains in QDQ form as quantcli writes
  them (UINT8 activations, per-channel INT8 weights, INT32 bias), which onnxruntime runs as
  QLinearConv / QLinearMatMul (with its NHWC layout transform around integer convolutions);
- the node's own time in a chain is (t4 - t1) / 3: what the chain's ends cost (QuantizeLinear,
  DequantizeLinear, layout transposes or reorders) cancels;
- a crossing between float and integer next to the node: a chain of three float nodes with the
  middle one integer, against three float ones, less the own-time difference, halved;
- a channel shuffle (Reshape/Transpose/Reshape) between two integer and two float pointwise Convs,
  per element: the layout conversions onnxruntime adds around NHWC integer convolutions.

All timings interleave the models round by round (median). The table records the CPU's flags,
the versions and the command. The shipped tables (quantize/costs/<kind>.json) come from

    quantcli measure-costs --kind avx2 -o quantcli/quantize/costs/avx2.json

on a machine of that kind (about 10 minutes on 2 cores; `--quick`, a coarser grid, about 2); a user
measures the CPU their models will run on the same way and converts with `--cost-table FILE`.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CHANNELS = (8, 16, 32, 64, 128, 256)
SPATIAL = (7, 14, 28, 56, 112)
CONV_KINDS = {  # name -> (kernel, groups as a function of channels)
    "pointwise": (1, lambda c: 1),
    "dense3": (3, lambda c: 1),
    "depthwise3": (3, lambda c: c),
    "depthwise5": (5, lambda c: c),
    "grouped1": (1, lambda c: 4),
    "grouped3": (3, lambda c: 4),
}
MATMUL_ROWS = (1, 8, 32, 128, 512)
MATMUL_DIMS = (32, 64, 128, 256, 512, 1024)
MAX_MACS = 250e6  # per node; larger ones take long to time and are compute-bound anyway
CHAIN = 4


def _cpu() -> dict:
    flags: list[str] = []
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))]
    return {"model": model, "flags": sorted(wanted), "machine": platform.machine()}


class _Builder:
    """Chains of one op in float or QDQ form (onnx.helper; the QDQ form as quantcli writes it)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, arr: np.ndarray, stem: str) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def quant(self, x: str, scale: float = 0.05, zp: int = 128) -> str:
        s = self.const(np.float32(scale), "s")
        z = self.const(np.uint8(zp), "z")
        q, dq = self.name("q"), self.name("dq")
        self.nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q]))
        self.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [dq]))
        return dq

    def weight(self, w: np.ndarray, qdq: bool, axis: int = 0) -> str:
        if not qdq:
            return self.const(w, "w")
        red = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=red) / 127 + 1e-8).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        qn, sn = self.const(q, "wq"), self.const(scale, "ws")
        zn = self.const(np.zeros_like(scale, dtype=np.int8), "wz")
        out = self.name("w")
        self.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out], axis=axis))
        return out

    def bias(self, b: np.ndarray, qdq: bool, in_scale: float, w_scale: np.ndarray) -> str:
        if not qdq:
            return self.const(b, "b")
        scale = (in_scale * w_scale).astype(np.float32)
        q = np.round(b / scale).astype(np.int32)
        qn, sn = self.const(q, "bq"), self.const(scale, "bs")
        zn = self.const(np.zeros_like(q), "bz")
        out = self.name("b")
        self.nodes.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out], axis=0))
        return out

    def conv(self, x: str, c: int, k: int, groups: int, qdq: bool) -> str:
        w = (self.rng.standard_normal((c, c // groups, k, k)) * 0.1).astype(np.float32)
        b = (self.rng.standard_normal(c) * 0.01).astype(np.float32)
        w_scale = (np.abs(w).max(axis=(1, 2, 3)) / 127 + 1e-8).astype(np.float32)
        wn = self.weight(w, qdq)
        bn = self.bias(b, qdq, 0.05, w_scale)
        out = self.name("conv")
        pad = k // 2
        self.nodes.append(
            helper.make_node("Conv", [x, wn, bn], [out], group=groups, kernel_shape=[k, k], pads=[pad] * 4)
        )
        return self.quant(out) if qdq else out

    def matmul(self, x: str, d: int, qdq: bool) -> str:
        w = (self.rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        wn = self.weight(w, qdq, axis=1)
        out = self.name("mm")
        self.nodes.append(helper.make_node("MatMul", [x, wn], [out]))
        return self.quant(out) if qdq else out

    def shuffle(self, x: str, c: int, hw: int, groups: int = 4) -> str:
        s1 = self.const(np.array([1, groups, c // groups, hw, hw], np.int64), "shape")
        s2 = self.const(np.array([1, c, hw, hw], np.int64), "shape")
        a, t, b = self.name("r"), self.name("t"), self.name("r")
        self.nodes.append(helper.make_node("Reshape", [x, s1], [a]))
        self.nodes.append(helper.make_node("Transpose", [a], [t], perm=[0, 2, 1, 3, 4]))
        self.nodes.append(helper.make_node("Reshape", [t, s2], [b]))
        return b

    def model(self, x_shape: list[int], out: str, out_shape: list[int]) -> bytes:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m.SerializeToString()


def _chain(
    kind: str, shape: dict, length: int, qdq: bool, shuffle: bool = False, int_at: int | None = None
) -> tuple[bytes, list[int]]:
    """`length` nodes of one class, all float or all QDQ (`qdq`), or float with the node at
    position `int_at` in QDQ form (a lone integer node between float ones)."""
    b = _Builder(np.random.default_rng(0))

    def quantized(i: int) -> bool:
        return qdq if int_at is None else i == int_at

    if kind == "MatMul":
        x_shape = [shape["m"], shape["k"]]
        x = "x"
        for i in range(length):
            x = b.quant(x) if quantized(i) and (i == 0 or not quantized(i - 1)) else x
            x = b.matmul(x, shape["k"], quantized(i))
        return b.model(x_shape, x, x_shape), x_shape
    c, hw = shape["c"], shape["hw"]
    k, groups = CONV_KINDS[kind][0], CONV_KINDS[kind][1](c)
    x_shape = [1, c, hw, hw]
    x = "x"
    for i in range(length):
        if shuffle and i:
            x = b.shuffle(x, c, hw)
        x = b.quant(x) if quantized(i) and (i == 0 or not quantized(i - 1)) else x
        x = b.conv(x, c, k, groups, quantized(i))
    return b.model(x_shape, x, x_shape), x_shape


def _sessions(models: list[bytes]) -> list[ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return [ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]) for m in models]


def _time(models: list[bytes], x_shape: list[int], budget_s: float) -> list[float]:
    """Median microseconds per run of each model, interleaved round by round in a rotating order."""
    sessions = _sessions(models)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    feed = {"x": x}
    for s in sessions:
        for _ in range(3):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    rounds = 0
    while rounds < 15 or (time.perf_counter() - start < budget_s and rounds < 400):
        order = list(range(len(sessions)))
        shift = rounds % len(order)
        for i in order[shift:] + order[:shift]:
            t0 = time.perf_counter_ns()
            sessions[i].run(None, feed)
            times[i].append((time.perf_counter_ns() - t0) / 1e3)
        rounds += 1
    return [statistics.median(t) for t in times]


def _macs(kind: str, shape: dict) -> float:
    if kind == "MatMul":
        return shape["m"] * shape["k"] * shape["k"]
    k, groups = CONV_KINDS[kind][0], CONV_KINDS[kind][1](shape["c"])
    return shape["c"] * (shape["c"] // groups) * k * k * shape["hw"] ** 2


def _entry(kind: str, shape: dict, budget_s: float) -> dict:
    models, x_shape = [], None
    for qdq in (False, True):
        for length in (1, CHAIN):
            m, x_shape = _chain(kind, shape, length, qdq)
            models.append(m)
    models.append(_chain(kind, shape, 3, False)[0])
    models.append(_chain(kind, shape, 3, False, int_at=1)[0])
    f1, f4, i1, i4, f3, fif = _time(models, x_shape, budget_s)
    f_own = max((f4 - f1) / (CHAIN - 1), 0.01)
    i_own = max((i4 - i1) / (CHAIN - 1), 0.01)
    return {
        **shape,
        "macs": int(_macs(kind, shape)),
        "elements": int(np.prod(x_shape)),
        "float_us": round(f_own, 3),
        "int_us": round(i_own, 3),
        # one crossing between float and integer next to this node: half of what a lone integer
        # node between two float ones adds beyond its own time difference (the Q or DQ, and the
        # layout conversions on both sides: NHWC transposes, NCHWc reorders)
        "crossing_us": round(((fif - f3) - (i_own - f_own)) / 2, 3),
        "medians_us": [round(t, 3) for t in (f1, f4, i1, i4, f3, fif)],
    }


def _shuffle_entry(c: int, hw: int, budget_s: float) -> dict:
    models = []
    for qdq in (False, True):
        for shuffle in (False, True):
            models.append(_chain("pointwise", {"c": c, "hw": hw}, 2, qdq, shuffle)[0])
    f, fs, i, is_ = _time(models, [1, c, hw, hw], budget_s)
    elements = c * hw * hw
    return {
        "c": c,
        "hw": hw,
        "float_ns": round(max(fs - f, 0.0) * 1e3 / elements, 4),
        "int_ns": round(max(is_ - i, 0.0) * 1e3 / elements, 4),
    }


@dataclass(frozen=True)
class Grid:
    """The shapes a table measures."""

    channels: tuple[int, ...] = CHANNELS
    spatial: tuple[int, ...] = SPATIAL
    matmul_rows: tuple[int, ...] = MATMUL_ROWS
    matmul_dims: tuple[int, ...] = MATMUL_DIMS
    shuffles: tuple[tuple[int, int], ...] = tuple((c, hw) for c in (16, 64, 256) for hw in (7, 28, 56))


FULL = Grid()
QUICK = Grid(CHANNELS[::2], SPATIAL[::2], MATMUL_ROWS[::2], MATMUL_DIMS[::2])


def measure(
    kind: str,
    *,
    budget_s: float = 0.25,
    grid: Grid = FULL,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The cost table of this CPU, for CPU kind `kind` (the JSON speed.CostTable reads): `budget_s`
    seconds of timing per shape (at least 15 interleaved rounds), on `grid`."""
    started = time.time()
    ops: dict[str, list[dict]] = {}

    def done(what: str, row: dict) -> None:
        if progress is not None:
            progress(
                f"{what}  float {row['float_us']:9.2f} us  int {row['int_us']:9.2f} us  "
                f"ratio {row['int_us'] / row['float_us']:.2f}"
            )

    for kind_name in CONV_KINDS:
        rows = []
        for c in grid.channels:
            for hw in grid.spatial:
                shape = {"c": c, "hw": hw}
                if _macs(kind_name, shape) > MAX_MACS or (kind_name.startswith("grouped") and c < 16):
                    continue
                rows.append(_entry(kind_name, shape, budget_s))
                done(f"{kind_name:11} c={c:4} hw={hw:4}", rows[-1])
        if rows:
            ops[kind_name] = rows
    rows = []
    for m in grid.matmul_rows:
        for d in grid.matmul_dims:
            shape = {"m": m, "k": d}
            if _macs("MatMul", shape) > MAX_MACS:
                continue
            rows.append(_entry("MatMul", shape, budget_s))
            done(f"MatMul      m={m:4} k={d:4}", rows[-1])
    if rows:
        ops["MatMul"] = rows
    shuffle = [_shuffle_entry(c, hw, budget_s) for c, hw in grid.shuffles]
    layout = {
        "float_ns": round(statistics.median(r["float_ns"] for r in shuffle), 4),
        "int_ns": round(statistics.median(r["int_ns"] for r in shuffle), 4),
        "points": shuffle,
    }
    return {
        "schema": 1,
        "kind": kind,
        "measured": {
            "date": datetime.date.today().isoformat(),
            "cpu": _cpu(),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "threads": 1,
            "batch": 1,
            "command": command,
            "seconds": round(time.time() - started),
        },
        "ops": ops,
        # a Reshape/Transpose/Flatten-like op on a convolution's output, per element: onnxruntime
        # converts an NHWC integer convolution's output back to NCHW there
        "layout": layout,
    }
