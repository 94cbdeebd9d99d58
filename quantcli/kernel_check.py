"""Which integer kernels a measurement ran on, and whether they compute what exact kernels do.

A model's INT8 weights on onnxruntime's U8S8 kernels are exact on VNNI and ARM CPUs; on x86 CPUs
without VNNI, a pair of products whose sum exceeds int16 saturates (quantize/saturation.py). The
output model depends on its target; a measurement depends on the host, so every accuracy figure
says which kernels it came from, and where the host's can differ from exact ones, the exact figure
is measured beside it (verify.exact_kernel_model).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantcli.cpu import host_features
from quantcli.errors import Notice
from quantcli.verify import Agreement


@dataclass
class Saturation:
    """The output's INT8 weights on onnxruntime's U8S8 kernels (inspect/saturation.py), for the
    declared target: `pairs_over` pairs in `layers_over` of the `layers` U8S8 layers exceed the int16
    limit of x86 CPUs without VNNI (0 for the default target); `exact_layers` keep full-range
    weights stored UINT8, on the exact U8U8 kernel (quantize/exact_layers.py)."""

    target_cpu: str
    layers: int
    layers_over: int
    pairs_over: int
    exact_layers: int = 0

    @classmethod
    def of(cls, target_cpu: str, layers: list, exact_layers: int = 0) -> Saturation:  # noqa: ANN001 - list[LayerRisk]
        over = [r for r in layers if r.pairs_over]
        return cls(target_cpu, len(layers), len(over), sum(r.pairs_over for r in over), exact_layers)


@dataclass
class KernelCheck:
    """Which integer kernels the accuracy figures came from. `host`: this CPU's features; `exact`:
    the same evaluation on exact integer kernels (verify.exact_kernel_model), measured only when
    this CPU's U8S8 kernels can saturate on the model (else `same_as_exact` says why not needed)."""

    host: dict
    same_as_exact: bool
    reason: str
    exact: Agreement | None = None
    onnxruntime_version: str = ""


def kernel_check(saturation: Saturation | None) -> KernelCheck:
    """Whether this CPU computes what exact integer kernels compute on the output, and why."""
    import onnxruntime

    host = host_features()
    if saturation is None or not saturation.layers:
        same, why = True, "no INT8 weights on U8S8 integer kernels"  # U8U8 ones are exact everywhere
    elif host.u8s8_saturates is False:
        same, why = True, "INT8 products accumulate in int32, as exact kernels do"
    elif not saturation.pairs_over:
        same, why = True, "no INT8 weight pair exceeds the int16 limit of CPUs without VNNI: exact here too"
    else:
        same, why = False, "no VNNI: INT8 products are added in saturating int16 pairs"
    return KernelCheck(host.to_dict(), same, why, onnxruntime_version=onnxruntime.__version__)


def saturation_warning(saturation: Saturation | None) -> list[str]:
    if saturation is None or not saturation.pairs_over:
        return []
    return [
        Notice(
            "u8s8-saturation",
            f"made for --target-cpu {saturation.target_cpu}: {saturation.pairs_over} INT8 weight pairs in "
            f"{saturation.layers_over} of {saturation.layers} integer layers exceed the int16 sums of x86 CPUs "
            "without VNNI, where onnxruntime can compute wrong results (--target-cpu any is exact everywhere)",
        )
    ]


def mismatch_warning(agreement: Agreement | None, check: KernelCheck) -> list[str]:
    """One line when this CPU's kernels and exact kernels give figures that differ beyond noise."""
    if agreement is None or check.exact is None:
        return []
    here, exact = agreement.outputs[0], check.exact.outputs[0]
    top1 = (
        here.top1_agreement is not None and abs(here.top1_agreement - (exact.top1_agreement or 0.0)) > 0.005
    )
    if not (abs(here.sqnr_db - exact.sqnr_db) > 1.0 or top1):
        return []
    figure = (
        f"top-1 agreement {100 * here.top1_agreement:.1f}% here vs {100 * exact.top1_agreement:.1f}% on exact kernels, "
        if top1
        else ""
    )
    return [
        Notice(
            "kernel-mismatch",
            f"output {here.name}: {figure}SQNR {here.sqnr_db:.1f} dB on this CPU's kernels vs {exact.sqnr_db:.1f} dB "
            f"on exact integer kernels (VNNI/ARM): {check.reason}",
        )
    ]
