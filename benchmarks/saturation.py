"""What the int16 pair limit of x86 CPUs without VNNI costs and saves (issue: accurate on every CPU).

For each model, one process, the same calibration (200) and evaluation files:
- quantcli static made for VNNI/ARM (--target-cpu vnni: full-range INT8 weights, today's output before
  the target existed), the default (--target-cpu any), and 7-bit weights everywhere (--reduce-range);
- onnxruntime quantize_static (QDQ, per-channel, MinMax, UInt8/Int8), and with reduce_range=True.
Each is scored against FP32 on this CPU's kernels and on exact integer kernels (the model with its
INT8 weights stored UINT8, verify.exact_kernel_model: what VNNI and ARM CPUs compute): logits SQNR,
mean cosine, top-1 agreement. Also: pairs over the limit (inspect/saturation.py, 0 = no input can
saturate), the file size relative to FP32, what the default changed against full range (layers on exact U8U8 kernels, channels
with a wider scale, weights whose integer differs), and the latency relative to FP32 (one thread,
batch 1, medians of interleaved rounds in a shuffled order).

    python benchmarks/saturation.py [--cases digits_cnn effnet_lite0 ...] [--rounds 300] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from _bench_cases import all_cases, load_feeds, load_labels
from _bench_convert import ort_static
from _bench_measure import make_session, median_latencies, run_outputs
from _bench_report import cpu_name
from onnx import numpy_helper

from quantcli.cpu import host_features
from quantcli.inspect.saturation import u8s8_layers
from quantcli.verify import exact_kernel_model

EVAL = 100  # evaluation samples scored per model


def quantcli(case, out: Path, *extra: str) -> float:  # noqa: ANN001
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "quantcli.cli", "convert", str(case.model), "--calib", str(case.calib),
         "--eval", str(case.eval), "--eval-samples", "2", "-o", str(out), "--quiet", *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return time.perf_counter() - t


def onnxruntime_static(case, out: Path, reduce_range: bool) -> float:  # noqa: ANN001
    """onnxruntime's quantize_static, run from the output's directory: quant_pre_process and the
    calibrator write temporary files (sym_shape_infer_temp.onnx, external data) into the cwd."""
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        return _onnxruntime_static(case, out, reduce_range)
    finally:
        os.chdir(cwd)


def _onnxruntime_static(case, out: Path, reduce_range: bool) -> float:  # noqa: ANN001
    t = time.perf_counter()
    if reduce_range:
        import onnxruntime.quantization as q

        original = q.quantize_static

        def patched(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            return original(*args, reduce_range=True, **kwargs)

        q.quantize_static = patched
        try:
            ort_static(str(case.model), str(case.calib), str(out))
        finally:
            q.quantize_static = original
    else:
        ort_static(str(case.model), str(case.calib), str(out))
    return time.perf_counter() - t


def metrics(values: np.ndarray, ref: np.ndarray, classifier: bool) -> dict:
    noise = float(np.sum((values - ref) ** 2))
    sqnr = 10 * np.log10(float(np.sum(ref**2)) / noise) if noise else float("inf")
    norms = np.linalg.norm(values, axis=1) * np.linalg.norm(ref, axis=1)
    cosine = float(np.mean(np.sum(values * ref, axis=1) / np.maximum(norms, 1e-30)))
    top1 = float(np.mean(values.argmax(1) == ref.argmax(1))) if classifier else None
    return {"sqnr": sqnr, "cosine": cosine, "top1": top1}


def changed(full: Path, safe: Path) -> dict:
    """Layers on U8U8, channels whose scale widened, weights whose integer differs: safe vs full."""
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(full).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(safe).graph.initializer}
    u8 = sum(1 for n, v in b.items() if n.endswith("_quantized") and v.dtype == np.uint8 and v.ndim >= 2)
    channels = weights = total = 0
    for name, q in a.items():
        if not name.endswith("_quantized") or q.dtype != np.int8 or q.ndim < 2 or name not in b:
            continue
        if b[name].dtype != np.int8:
            continue
        total += q.size
        weights += int(np.count_nonzero(q != b[name]))
        sa, sb = a.get(name.replace("_quantized", "_scale")), b.get(name.replace("_quantized", "_scale"))
        if sa is not None and sb is not None and sa.shape == sb.shape:
            channels += int(np.count_nonzero(~np.isclose(sa, sb, rtol=1e-6)))
    return {"u8u8_layers": u8, "channels_widened": channels, "weights_changed": weights, "weights": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    cases, notes = all_cases()
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    host = host_features()
    lines = [
        "# The int16 pair limit: accuracy and latency per target",
        "",
        f"CPU: {cpu_name()}; quantcli measures on it as `{host.kind}` "
        f"(U8S8 saturates: {host.u8s8_saturates}). onnxruntime {__import__('onnxruntime').__version__}, "
        f"1 intra-op thread, batch 1, {args.rounds} interleaved rounds.",
        f"Command: `python benchmarks/saturation.py {' '.join(sys.argv[1:])}`",
        "",
        "SQNR (dB) / cosine / top-1 agreement of the scored output vs FP32, on exact integer kernels "
        "(= VNNI, ARM) and on this CPU's kernels; pairs: INT8 weight pairs over the int16 limit "
        "(0: nothing can saturate); size and latency / FP32.",
        "",
    ]
    for note in notes:
        lines.append(f"- {note}")
    with tempfile.TemporaryDirectory(prefix="quantcli-sat-") as tmp:
        for case in cases:
            d = Path(tmp) / case.name
            d.mkdir()
            variants = {
                "quantcli --target-cpu vnni (full range)": (d / "full.onnx", ("--target-cpu", "vnni")),
                "quantcli default (--target-cpu any)": (d / "any.onnx", ()),
                "quantcli --reduce-range": (d / "rr.onnx", ("--target-cpu", "vnni", "--reduce-range")),
                "onnxruntime quantize_static": (d / "ort.onnx", None),
                "onnxruntime quantize_static reduce_range": (d / "ort_rr.onnx", "rr"),
            }
            seconds = {}
            for label, (path, extra) in variants.items():
                try:
                    if extra is None or extra == "rr":
                        seconds[label] = onnxruntime_static(case, path, extra == "rr")
                    else:
                        seconds[label] = quantcli(case, path, *extra)
                except Exception as exc:  # noqa: BLE001 - a failed conversion is a result
                    lines.append(f"- {case.name}: {label} failed: {exc}")
            feeds = load_feeds(case.eval)[:EVAL]
            _ = load_labels(case)
            ref = run_outputs(make_session(case.model), feeds, case.output)
            sessions = {"fp32": make_session(case.model)}
            rows = []
            for label, (path, _extra) in variants.items():
                if not path.exists():
                    continue
                host_m = metrics(run_outputs(make_session(path), feeds, case.output), ref, case.classifier)
                exact_model = exact_kernel_model(onnx.load(path))
                if exact_model is not None:
                    exact_path = path.with_suffix(".exact.onnx")
                    onnx.save(exact_model, exact_path)
                    exact_m = metrics(
                        run_outputs(make_session(exact_path), feeds, case.output), ref, case.classifier
                    )
                else:
                    exact_m = host_m
                pairs = sum(layer.pairs_over or 0 for layer in u8s8_layers(onnx.load(path).graph))
                sessions[label] = make_session(path)
                size = path.stat().st_size / case.model.stat().st_size
                rows.append((label, exact_m, host_m, pairs, size, seconds.get(label)))
            medians = median_latencies(sessions, feeds[0], args.rounds)
            lines += ["", f"## {case.name}", ""]
            lines += [
                "| conversion | exact kernels: SQNR / cosine / top-1 | this CPU: SQNR / cosine / top-1 | pairs over | size / FP32 | latency / FP32 | convert s |",
                "|---|---|---|---|---|---|---|",
            ]
            for label, e, h, pairs, size, secs in rows:

                def cell(m: dict) -> str:
                    top1 = "-" if m["top1"] is None else f"{100 * m['top1']:.1f}%"
                    return f"{m['sqnr']:.2f} / {m['cosine']:.5f} / {top1}"

                ratio = medians[label] / medians["fp32"]
                lines.append(
                    f"| {label} | {cell(e)} | {cell(h)} | {pairs} | {size:.3f} | {ratio:.3f} | {secs:.1f} |"
                )
            if (d / "full.onnx").exists() and (d / "any.onnx").exists():
                c = changed(d / "full.onnx", d / "any.onnx")
                lines.append("")
                lines.append(
                    f"Default vs full range: {c['u8u8_layers']} layer(s) on exact U8U8 kernels; of the INT8 "
                    f"layers, {c['channels_widened']} channels with a wider scale and {c['weights_changed']:,} of "
                    f"{c['weights']:,} weights with another integer."
                )
            print("\n".join(lines[-(len(rows) + 6) :]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.markdown:
        args.markdown.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
