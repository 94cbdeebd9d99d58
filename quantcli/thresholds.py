"""Bounds on accuracy, size and latency figures, and the checks that compare figures with them.

A library, not CLI code: `compare` checks its figures with it, and an accuracy budget for `convert`
can reuse the same Thresholds and evaluate(). Per-output bounds map an output name to a bound, the
key "" being the default for every output (Polygraphy's convention).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from quantcli.errors import UsageError
from quantcli.verify import Agreement

DEFAULT = ""


@dataclass(frozen=True)
class Limit:
    """One threshold option: the figure it bounds, in which direction, and for which outputs."""

    option: str  # the flag without dashes, e.g. "min-cosine"
    figure: str  # OutputMetrics attribute, or a whole-model figure
    label: str  # how a message names the figure
    lower: bool  # True: the figure must be >= the bound; False: <= the bound
    per_output: bool
    low: float = -math.inf  # the range a bound must lie in
    high: float = math.inf
    positive: bool = False  # the bound must also be > 0


LIMITS: dict[str, Limit] = {
    limit.option: limit
    for limit in (
        Limit("min-cosine", "cosine_mean", "mean cosine similarity", True, True, -1.0, 1.0),
        Limit("max-abs-error", "max_abs_error", "max abs error", False, True, 0.0),
        Limit("min-sqnr", "sqnr_db", "SQNR (dB)", True, True),
        Limit("min-top1-agreement", "top1_agreement", "top-1 agreement", True, True, 0.0, 1.0),
        Limit("max-accuracy-drop", "accuracy_drop", "accuracy drop", False, False, 0.0, 1.0),
        Limit("max-size-ratio", "size_ratio", "size ratio candidate/reference", False, False, positive=True),
        Limit(
            "max-latency-ratio",
            "latency_ratio",
            "latency ratio candidate/reference",
            False,
            False,
            positive=True,
        ),
    )
}


@dataclass(frozen=True)
class Thresholds:
    """The bounds a user set; an empty mapping or None means no check. A per-output bound may be
    given as one number, which means {"": number} (every output)."""

    min_cosine: Mapping[str, float] | float = field(default_factory=dict)
    max_abs_error: Mapping[str, float] | float = field(default_factory=dict)
    min_sqnr: Mapping[str, float] | float = field(default_factory=dict)
    min_top1_agreement: Mapping[str, float] | float = field(default_factory=dict)
    max_accuracy_drop: float | None = None
    max_size_ratio: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        for option, limit in LIMITS.items():
            value = getattr(self, option.replace("-", "_"))
            if limit.per_output and isinstance(value, int | float):
                object.__setattr__(self, option.replace("-", "_"), {DEFAULT: float(value)})
        for limit, bounds in self.items():
            for output, bound in bounds.items():
                where = f"--{limit.option} {output + '=' if output else ''}{bound}"
                if not math.isfinite(bound):
                    raise UsageError(f"{where}: the bound must be a finite number")
                if limit.positive and bound <= 0:
                    raise UsageError(f"{where}: must be greater than 0")
                if not limit.low <= bound <= limit.high:
                    raise UsageError(f"{where}: out of range [{limit.low:g}, {limit.high:g}]")

    def items(self) -> list[tuple[Limit, Mapping[str, float]]]:
        """(limit, {output or "": bound}) for every option, in LIMITS order."""
        result = []
        for option, limit in LIMITS.items():
            value = getattr(self, option.replace("-", "_"))
            if limit.per_output:
                result.append((limit, dict(value)))
            else:
                result.append((limit, {} if value is None else {DEFAULT: float(value)}))
        return result

    @property
    def needs_latency(self) -> bool:
        return self.max_latency_ratio is not None

    def check_outputs(self, names: Iterable[str]) -> None:
        """Every output a per-output bound names must exist; raises UsageError otherwise."""
        known = list(names)
        for limit, bounds in self.items():
            for output in bounds:
                if output != DEFAULT and output not in known:
                    raise UsageError(
                        f"--{limit.option} {output}=...: the models have no output '{output}' "
                        f"(outputs: {', '.join(known)})"
                    )


def parse_bound(option: str, text: str) -> tuple[str, float]:
    """'0.99' -> ("", 0.99); 'logits=0.995' -> ("logits", 0.995); raises UsageError."""
    output, sep, number = text.rpartition("=")
    if sep and not output:
        raise UsageError(f"--{option} {text}: expected X or OUTPUT=X")
    try:
        return output, float(number)
    except ValueError:
        raise UsageError(f"--{option} {text}: '{number}' is not a number") from None


def per_output(option: str, pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Repeated `--option [OUTPUT=]X` values as {output or "": bound}; a repeated output is an error."""
    bounds: dict[str, float] = {}
    for output, bound in pairs:
        if output in bounds:
            raise UsageError(
                f"--{option} is given twice for {f'output {output}' if output else 'all outputs'}"
            )
        bounds[output] = bound
    return bounds


@dataclass(frozen=True)
class Check:
    """One bound compared with one figure; `output` is None for a whole-model figure."""

    option: str
    figure: str
    output: str | None
    value: float
    bound: float
    lower: bool
    passed: bool

    @property
    def comparison(self) -> str:
        return ">=" if self.lower else "<="

    @property
    def message(self) -> str:
        """'<output> <figure> <value> <op> <bound> (--option)', with the figure and bound in enough
        digits to tell them apart."""
        label = LIMITS[self.option].label
        value, bound = distinct_digits(self.value, self.bound)
        op = self.comparison if self.passed else ("<" if self.lower else ">")
        subject = f"output {self.output}: {label}" if self.output is not None else label
        return f"{subject} {value} {op} {bound} (--{self.option})"


def distinct_digits(a: float, b: float) -> tuple[str, str]:
    """A figure `a` and a bound `b` as text: the bound as the user wrote it (shortest repr), the
    figure in the fewest significant digits (at least 6) that keep it on its side of the bound."""
    sb = repr(float(b)) if math.isfinite(b) else str(b)
    for digits in range(6, 18):
        sa = f"{a:.{digits}g}"
        if a == b or (float(sa) > b) == (a > b) and (float(sa) < b) == (a < b):
            return sa, sb
    return repr(a), sb


def evaluate(
    thresholds: Thresholds,
    agreement: Agreement,
    *,
    size_ratio: float | None = None,
    latency_ratio: float | None = None,
) -> list[Check]:
    """Every bound checked against its figure, in LIMITS order then output order.

    A bound on a figure that was not measured (top-1 agreement of an output that is not
    classifier-shaped, accuracy without labels, latency not measured) is a UsageError, so that a
    check the user asked for never silently disappears; only the default ("") per-output bound
    skips the outputs it does not apply to, as long as it applies to one.
    """
    thresholds.check_outputs(o.name for o in agreement.outputs)
    checks: list[Check] = []
    whole = {
        "accuracy_drop": agreement.accuracy_drop,
        "size_ratio": size_ratio,
        "latency_ratio": latency_ratio,
    }
    for limit, bounds in thresholds.items():
        if not bounds:
            continue
        if not limit.per_output:
            value = whole[limit.figure]
            if value is None:
                raise UsageError(f"--{limit.option}: {_unmeasured(limit.figure)}")
            checks.append(_check(limit, None, value, bounds[DEFAULT]))
            continue
        applied = 0
        for metrics in agreement.outputs:
            bound = bounds.get(metrics.name, bounds.get(DEFAULT))
            if bound is None:
                continue
            value = getattr(metrics, limit.figure)
            if value is None:
                if metrics.name in bounds:
                    raise UsageError(f"--{limit.option} {metrics.name}=...: {_unmeasured(limit.figure)}")
                continue
            checks.append(_check(limit, metrics.name, value, bound))
            applied += 1
        if not applied:
            raise UsageError(f"--{limit.option}: {_unmeasured(limit.figure)}")
    return checks


def _check(limit: Limit, output: str | None, value: float, bound: float) -> Check:
    passed = value >= bound if limit.lower else value <= bound
    return Check(limit.option, limit.figure, output, float(value), float(bound), limit.lower, bool(passed))


def _unmeasured(figure: str) -> str:
    return {
        "top1_agreement": "not measured: no output is classifier-shaped ([batch, classes])",
        "accuracy_drop": "not measured: needs labels.npy beside the --data samples and a classifier-shaped first output",
        "size_ratio": "not measured",
        "latency_ratio": "not measured: latency was not timed",
    }.get(figure, "not measured")
