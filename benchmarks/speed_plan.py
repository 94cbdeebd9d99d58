"""Issue #18: is a static model faster than FP32 on this CPU, with and without the speed plan?

Builds three architectures whose integer kernels are slow on x86 CPUs without VNNI (random weights,
torch, dev-only): a 3-conv CNN over few channels, a MobileNetV2-style network (depthwise 3x3
convolutions) on a 48x160 text-line image, and a ShuffleNet-style network (grouped 1x1
convolutions, channel shuffles, depthwise 3x3) at 224x224. Each is converted by

- quantcli static (the default: the speed plan keeps in float what the cost table says is slower),
- quantcli static --no-speed-plan (every node INT8 that accuracy allows),
- onnxruntime quantize_static (quant_pre_process, QDQ, per-channel, MinMax),

on the same 64 random calibration samples, then timed against FP32: onnxruntime CPU provider,
1 intra-op thread, batch 1, every model in one process, one run each per round in a fresh seeded
random order, medians (_bench_measure.median_latencies, as compare_ort.py). The CPU's flags head the output.

    python benchmarks/speed_plan.py [--rounds 400] [--markdown FILE]

The sample models, EfficientNet-Lite0 and all-MiniLM-L6-v2 go through compare_ort.py with the
row quantcli-static-all-int8 beside quantcli-static.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_convert import ort_static  # noqa: E402
from _bench_measure import make_session, median_latencies, run_outputs, score  # noqa: E402
from _bench_report import cpu_name  # noqa: E402

SAMPLES = 64


def _models():  # noqa: ANN202 - torch modules, imported here (dev-only)
    import torch
    from torch import nn

    torch.manual_seed(0)

    def conv(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, act: bool = True) -> nn.Module:
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else layers[0]

    class TinyCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Sequential(conv(1, 8), conv(8, 16, s=2), conv(16, 16), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(16, 10)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.head(torch.flatten(self.f(x), 1))

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, s: int, e: int = 4) -> None:
            super().__init__()
            mid = cin * e
            self.res = s == 1 and cin == cout
            self.f = nn.Sequential(
                conv(cin, mid, 1), conv(mid, mid, 3, s, g=mid), conv(mid, cout, 1, act=False)
            )

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.f(x) if self.res else self.f(x)

    class MobileNetLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = [conv(3, 16, s=2)]
            cin = 16
            for cout, s, n in ((16, 1, 1), (24, 2, 2), (32, 2, 3), (64, 1, 3), (96, 2, 2)):
                for i in range(n):
                    blocks.append(Inverted(cin, cout, s if i == 0 else 1))
                    cin = cout
            self.f = nn.Sequential(*blocks, conv(cin, 256, 1), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(256, 40)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.head(torch.flatten(self.f(x), 1))

    def shuffle(x, groups: int):  # noqa: ANN001, ANN202
        n, c, h, w = x.shape
        return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, c: int, groups: int = 4) -> None:
            super().__init__()
            self.groups = groups
            self.a = conv(c, c // 4 * 1, 1, g=groups)
            self.b = conv(c // 4, c // 4, 3, g=c // 4, act=False)
            self.c = conv(c // 4, c, 1, g=groups, act=False)

        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.relu(x + self.c(self.b(shuffle(self.a(x), self.groups))))

    class ShuffleNetLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = [conv(3, 24, s=2), nn.MaxPool2d(3, 2, 1), conv(24, 240, 1)]
            for c, n, down in ((240, 3, False), (480, 4, True), (960, 2, True)):
                if down:
                    layers.append(conv(c // 2, c, 3, s=2, g=c // 2))
                layers += [ShuffleUnit(c) for _ in range(n)]
            self.f = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(960, 1000)

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.head(torch.flatten(self.f(x), 1))

    return {
        "tiny_cnn": (TinyCnn(), (1, 1, 28, 28)),
        "mobilenet_like": (MobileNetLike(), (1, 3, 48, 160)),
        "shufflenet_like": (ShuffleNetLike(), (1, 3, 224, 224)),
    }


def _export(module, shape: tuple[int, ...], path: Path) -> None:  # noqa: ANN001 - a torch module
    import onnx
    import torch

    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module,
            torch.zeros(shape),
            str(path),
            input_names=["x"],
            output_names=["y"],
            opset_version=17,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _measure(paths: list[Path], xs: list[np.ndarray], rounds: int) -> tuple[list[float], list[float]]:
    """Median ms per run at batch 1 of each model (compare_ort.py's timing: one session per model,
    every round in a fresh seeded random order) and the mean cosine of its output vs the first's."""
    sessions = {str(p): make_session(p) for p in paths}
    seconds = median_latencies(sessions, {"x": xs[0]}, rounds)
    outputs = [run_outputs(s, [{"x": x} for x in xs], None) for s in sessions.values()]
    cosines = [score(o, outputs[0], None, classifier=False).cosine for o in outputs]
    return [seconds[str(p)] * 1e3 for p in paths], cosines


def _quantcli(model: Path, calib: Path, out: Path, *extra: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "quantcli.cli",
        "convert",
        str(model),
        "--calib",
        str(calib),
        "-o",
        str(out),
        "--json",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()[:400]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    lines = [f"- CPU: {cpu_name()}", f"- command: python benchmarks/speed_plan.py --rounds {args.rounds}", ""]
    lines += [
        "| model | FP32 ms | quantcli static | quantcli --no-speed-plan | onnxruntime quantize_static | kept float (speed plan) | cosine: static / all-int8 / ort |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="quantcli-speed-") as tmp:
        root = Path(tmp)
        for name, (module, shape) in _models().items():
            model = root / f"{name}.onnx"
            _export(module, shape, model)
            rng = np.random.default_rng(0)
            calib = root / f"{name}_calib"
            calib.mkdir()
            xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(SAMPLES)]
            for i, x in enumerate(xs):
                np.savez(calib / f"s{i:03d}.npz", x=x)
            q = root / f"{name}.static.onnx"
            report = _quantcli(model, calib, q)
            q_all = root / f"{name}.all-int8.onnx"
            _quantcli(model, calib, q_all, "--no-speed-plan")
            o = root / f"{name}.ort.onnx"
            ort_static(str(model), str(calib), str(o))
            paths = [model, q, q_all, o]
            ms, cos = _measure(paths, xs[:16], args.rounds)
            sp = report.get("speed_plan") or {}
            kept = f"{len(sp.get('kept_float', []))} of {sp.get('candidates', '?')}"
            est = "; ".join(
                f"{k}: est. {v['planned'] / 1e3:.3g} vs {v['all_int8'] / 1e3:.3g} ms"
                for k, v in sp.get("estimate_us", {}).items()
            )
            row = (
                f"| {name} | {ms[0]:.3f} | {ms[1] / ms[0]:.3f} | {ms[2] / ms[0]:.3f} | {ms[3] / ms[0]:.3f} | "
                f"{kept} ({est}; no table: {', '.join(sp.get('no_table_for', [])) or 'none'}) | "
                f"{cos[1]:.5f} / {cos[2]:.5f} / {cos[3]:.5f} |"
            )
            lines.append(row)
            print(row, flush=True)
    lines += ["", "Latency columns: median time / FP32 median time at batch 1 (below 1.0: faster than FP32)."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text("# Speed plan (issue #18)\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
