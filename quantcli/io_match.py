"""Pairing the inputs and outputs of two models by name, and converting samples between their dtypes.

Models whose inputs or outputs are not float32 are compared in float32: float16 is cast, and an
integer tensor of a full-integer model is converted with the scale and zero point recorded in its
`metadata_props` under IO_QUANTIZATION_KEY, a JSON object
`{"<tensor name>": {"scale": <float>, "zero_point": <int>, "dtype": "uint8"}, ...}`
(float = (q - zero_point) * scale; "dtype" is optional and, when given, must be the tensor's type).
`convert --integer-io` writes it (encode_io_quantization).
Any other difference in names, dtypes or static dimensions is a UsageError (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from quantcli.errors import BadModelError, UsageError

IO_QUANTIZATION_KEY = "quantcli.io_quantization"


@dataclass(frozen=True)
class IOQuantization:
    """How an integer input/output of a full-integer model maps to float: (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str | None = None  # numpy name of the integer type, e.g. "uint8"


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorIO:
    """One input or output of a model as onnxruntime sees it, with its recorded quantization."""

    name: str
    type: str  # onnxruntime's type string, e.g. "tensor(float)"
    shape: tuple[int | str | None, ...] | None
    quantization: IOQuantization | None = None

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype, or None for a type numpy cannot hold (sequences, maps, bfloat16)."""
        t = _ORT_TYPES.get(self.type)
        return None if t is None else np.dtype(t)

    @property
    def is_float(self) -> bool:
        return self.dtype is not None and self.dtype.kind == "f"

    def describe(self) -> str:
        name = str(self.dtype) if self.dtype is not None else self.type
        if self.quantization is not None:
            q = self.quantization
            name += f" (scale {q.scale:.6g}, zero point {q.zero_point})"
        return name

    def from_float(self, value: np.ndarray) -> np.ndarray:
        """A sample value in this tensor's dtype: cast, or quantized with the recorded parameters."""
        dtype = self.dtype
        if dtype is None or value.dtype == dtype:
            return value
        if self.quantization is not None and dtype.kind in "iu":
            info = np.iinfo(dtype)
            q = np.rint(value.astype(np.float64) / self.quantization.scale) + self.quantization.zero_point
            return np.clip(q, info.min, info.max).astype(dtype)
        return value.astype(dtype)

    def to_float(self, value: np.ndarray) -> np.ndarray:
        """A value to compare: float16 as float32, an integer dequantized with the recorded parameters
        (or as float64 when none are recorded); float32/float64 unchanged."""
        value = np.asarray(value)
        if self.quantization is not None and value.dtype.kind in "iu":
            q = self.quantization
            return ((value.astype(np.float64) - q.zero_point) * q.scale).astype(np.float32)
        if value.dtype.kind == "f":
            return value if value.dtype.itemsize >= 4 else value.astype(np.float32)
        return value.astype(np.float64)


@dataclass(frozen=True)
class IOPair:
    """An input or output present, by name, in both models; `sample_dtype` is the dtype samples are
    read in (inputs) or the values are compared in (outputs)."""

    name: str
    reference: TensorIO
    candidate: TensorIO
    sample_dtype: np.dtype

    @property
    def converted(self) -> bool:
        return self.reference.type != self.candidate.type or (
            self.reference.quantization != self.candidate.quantization
        )


@dataclass(frozen=True)
class IOMatch:
    """How the inputs and outputs of two models correspond, and how to feed each one a sample."""

    inputs: list[IOPair]
    outputs: list[IOPair]

    def feeds(self, sample: Mapping[str, np.ndarray], side: str) -> dict[str, np.ndarray]:
        """The sample converted for the "reference" or the "candidate" model."""
        return {p.name: getattr(p, side).from_float(sample[p.name]) for p in self.inputs}


def session_io(session, where: str) -> tuple[list[TensorIO], list[TensorIO]]:  # noqa: ANN001
    """Inputs and outputs of an onnxruntime session, with the I/O quantization its metadata records."""
    recorded = io_quantization(session.get_modelmeta().custom_metadata_map, where)

    def tensors(args) -> list[TensorIO]:  # noqa: ANN001
        found = [
            TensorIO(a.name, a.type, tuple(a.shape) if a.shape is not None else None, recorded.get(a.name))
            for a in args
        ]
        for t in found:
            q = t.quantization
            if q is not None and q.dtype is not None and t.dtype is not None and np.dtype(q.dtype) != t.dtype:
                raise BadModelError(
                    f"{where}: metadata '{IO_QUANTIZATION_KEY}' records '{t.name}' as {q.dtype}, "
                    f"but the model's tensor is {t.dtype}"
                )
        return found

    return tensors(session.get_inputs()), tensors(session.get_outputs())


def io_quantization(metadata: Mapping[str, str], where: str) -> dict[str, IOQuantization]:
    """The scale and zero point recorded per integer input/output (IO_QUANTIZATION_KEY)."""
    raw = metadata.get(IO_QUANTIZATION_KEY)
    if raw is None:
        return {}
    try:
        entries = json.loads(raw)
        found = {}
        for name, e in entries.items():
            dtype = e.get("dtype")
            if dtype is not None and np.dtype(str(dtype)).kind not in "iu":
                raise ValueError(f"dtype {dtype!r} of '{name}' is not an integer type")
            found[name] = IOQuantization(
                float(e["scale"]), int(e["zero_point"]), None if dtype is None else str(dtype)
            )
        return found
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadModelError(
            f"{where}: metadata '{IO_QUANTIZATION_KEY}' is not a JSON object of "
            f'{{"<tensor>": {{"scale": s, "zero_point": z}}}}: {exc}'
        ) from exc


def encode_io_quantization(entries: Mapping[str, IOQuantization]) -> str:
    """The IO_QUANTIZATION_KEY metadata value that io_quantization() reads back."""
    return json.dumps(
        {
            name: {"scale": q.scale, "zero_point": q.zero_point, **({"dtype": q.dtype} if q.dtype else {})}
            for name, q in entries.items()
        }
    )


def match_io(
    reference,  # noqa: ANN001 - onnxruntime.InferenceSession
    candidate,  # noqa: ANN001
    *,
    strict: bool = True,
    reference_label: str = "reference",
    candidate_label: str = "candidate",
) -> IOMatch:
    """Pair the inputs and outputs of two sessions by name; a mismatch is a UsageError (exit 2).

    float16 and float32 are compared in float32; an integer tensor needs the scale and zero point
    recorded in its model's metadata; any other difference in names, dtypes or static dimensions
    is an error. `strict=False` compares only the outputs both models have (convert's behaviour).
    """
    ref_in, ref_out = session_io(reference, reference_label)
    cand_in, cand_out = session_io(candidate, candidate_label)
    inputs = _pair("inputs", ref_in, cand_in, True, reference_label, candidate_label)
    outputs = _pair("outputs", ref_out, cand_out, strict, reference_label, candidate_label)
    if not outputs:
        raise UsageError(f"{candidate_label}: has none of the outputs of {reference_label}")
    return IOMatch(inputs, outputs)


def _pair(
    kind: str, ref: list[TensorIO], cand: list[TensorIO], strict: bool, ref_label: str, cand_label: str
) -> list[IOPair]:
    by_name = {t.name: t for t in cand}
    missing = [t.name for t in ref if t.name not in by_name]
    extra = sorted(set(by_name) - {t.name for t in ref})
    if strict and (missing or extra):
        detail = [f"missing {', '.join(missing)}"] if missing else []
        detail += [f"unexpected {', '.join(extra)}"] if extra else []
        raise UsageError(
            f"{cand_label}: its {kind} do not match those of {ref_label} by name ({'; '.join(detail)})"
        )
    pairs = []
    for r in ref:
        c = by_name.get(r.name)
        if c is None:
            continue
        what = f"{kind[:-1]} '{r.name}'"
        if r.dtype is None or c.dtype is None:
            raise UsageError(f"{what}: type {r.type} / {c.type} cannot be compared (tensors only)")
        _check_shapes(what, r, c, ref_label, cand_label)
        pairs.append(IOPair(r.name, r, c, _common_dtype(what, r, c, ref_label, cand_label)))
    return pairs


def _convertible(t: TensorIO) -> bool:
    return t.is_float or (t.quantization is not None and t.dtype is not None and t.dtype.kind in "iu")


def _common_dtype(what: str, r: TensorIO, c: TensorIO, ref_label: str, cand_label: str) -> np.dtype:
    if r.type == c.type and r.quantization == c.quantization:
        return r.dtype
    for t, label in ((r, ref_label), (c, cand_label)):
        if not _convertible(t):
            raise UsageError(
                f"{what}: {ref_label} has {r.describe()}, {cand_label} has {c.describe()}, and {label} "
                f"records no scale/zero point for it (metadata '{IO_QUANTIZATION_KEY}')"
            )
    # Samples are read in the reference's float dtype when it has one; else float32.
    if r.is_float:
        return r.dtype
    return c.dtype if c.is_float else np.dtype(np.float32)


def _check_shapes(what: str, r: TensorIO, c: TensorIO, ref_label: str, cand_label: str) -> None:
    if r.shape is None or c.shape is None:
        return
    fixed = [
        (a, b) for a, b in zip(r.shape, c.shape, strict=False) if isinstance(a, int) and isinstance(b, int)
    ]
    if len(r.shape) != len(c.shape) or any(a != b for a, b in fixed):
        raise UsageError(
            f"{what}: {ref_label} has shape {_shape(r.shape)}, {cand_label} has {_shape(c.shape)}"
        )


def _shape(shape: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in shape) + "]"
