"""The `compare --json` object and its JSON Schema (COMPARE_JSON_SCHEMA); computes nothing."""

from __future__ import annotations

from typing import Any

from quantcli import __version__
from quantcli.compare import CompareResult, ModelFacts
from quantcli.errors import notice_code
from quantcli.per_layer import GRAPH_INPUT
from quantcli.report import SCHEMA_VERSION, number
from quantcli.report.checks import check_dicts
from quantcli.text import exclude_flag


def compare_to_dict(r: CompareResult) -> dict[str, Any]:
    """The documented `compare --json` object (schema_version 1, COMPARE_JSON_SCHEMA)."""
    a = r.agreement
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "compare",
        "quantcli_version": __version__,
        "passed": r.passed,
        "exit_code": int(r.exit_code),
        "reference": _model(r.reference),
        "candidate": _model(r.candidate),
        "size": {
            "reference_bytes": r.reference.file_bytes,
            "candidate_bytes": r.candidate.file_bytes,
            "ratio": r.size_ratio,
        },
        "data": {
            "source": r.data.kind,
            "path": str(r.data.path) if r.data.path is not None else None,
            "samples": r.data.samples,
            "labels": r.data.labels,
            "seed": r.data.seed,
        },
        "io": {
            kind: [
                {
                    "name": p.name,
                    "reference_type": p.reference.describe(),
                    "candidate_type": p.candidate.describe(),
                    "converted": p.converted,
                }
                for p in pairs
            ]
            for kind, pairs in (("inputs", r.io.inputs), ("outputs", r.io.outputs))
        },
        "outputs": [
            {
                "name": o.name,
                "samples": o.samples,
                "cosine_mean": number(o.cosine_mean),
                "cosine_min": number(o.cosine_min),
                "max_abs_error": number(o.max_abs_error),
                "mean_abs_error": number(o.mean_abs_error),
                "relative_error": number(o.relative_error),
                "sqnr_db": number(o.sqnr_db),
                "top1_agreement": o.top1_agreement,
                "top5_overlap": o.top5_overlap,
            }
            for o in a.outputs
        ],
        "accuracy": None
        if a.reference_accuracy is None
        else {"reference": a.reference_accuracy, "candidate": a.candidate_accuracy, "drop": a.accuracy_drop},
        "per_layer": None if r.per_layer is None else _per_layer(r),
        "latency": None
        if r.latency is None
        else {
            "threads": r.latency.threads,
            "rounds": r.latency.rounds,
            "warmup": r.latency.warmup,
            "reference_ms": r.latency.reference_ms,
            "candidate_ms": r.latency.candidate_ms,
            "reference_min_ms": r.latency.reference_min_ms,
            "candidate_min_ms": r.latency.candidate_min_ms,
            "ratio": number(r.latency.ratio),
        },
        "checks": check_dicts(r.checks),
        "kernels": _kernels(r),
        "warnings": r.warnings,
        "warning_codes": [notice_code(w) for w in r.warnings],
        "seconds": {k: round(v, 4) for k, v in r.seconds.items()},
    }


def _kernels(r: CompareResult) -> dict[str, Any]:
    """Which integer kernels `outputs` came from (this CPU's), and the same comparison on exact
    integer kernels when this CPU's U8S8 kernels can saturate on these models."""
    k = r.kernels
    exact = None
    if k.exact is not None:
        exact = [{"name": o.name, "cosine_mean": number(o.cosine_mean), "sqnr_db": number(o.sqnr_db),
                  "top1_agreement": o.top1_agreement} for o in k.exact.outputs]  # fmt: skip
    return {
        "host": k.host,
        "onnxruntime_version": k.onnxruntime_version,
        "same_as_exact": k.same_as_exact,
        "reason": k.reason,
        "exact_outputs": exact,
    }


def _model(m: ModelFacts) -> dict[str, Any]:
    return {"path": str(m.path), "file_bytes": m.file_bytes, "parameter_bytes": m.parameter_bytes}


def _per_layer(r: CompareResult) -> dict[str, Any]:
    p = r.per_layer
    return {
        "note": p.note,
        "samples": p.samples,
        "runs": p.runs,
        "clean_sqnr_db": p.clean_sqnr_db,
        "layers": [
            {
                "rank": k,
                "tensor": e.tensor,
                "candidate_tensor": e.candidate_tensor,
                "candidate_node": e.candidate_node,
                "candidate_op_type": e.candidate_op_type,
                "node": e.node,
                "op_type": e.op_type,
                "sqnr_db": number(e.metrics.sqnr_db),
                "input_sqnr_db": number(e.input_sqnr_db),
                "added_db": number(e.added_db),
                "cosine_mean": number(e.metrics.cosine_mean),
                "cosine_min": number(e.metrics.cosine_min),
                "max_abs_error": number(e.metrics.max_abs_error),
                "mean_abs_error": number(e.metrics.mean_abs_error),
                "inputs": e.inputs,
                # convert keeps this layer's node in float with it (null for a graph input)
                "exclude_flag": exclude_flag([e.node]) if e.op_type != GRAPH_INPUT else None,
            }
            for k, e in enumerate(p.layers, start=1)
        ],
        "unmatched": [
            {"tensor": t, "node": n, "op_type": op, "reason": why} for t, n, op, why in p.unmatched
        ],
    }


# The `compare --json` object, as JSON Schema (draft 2020-12). Figures that can be infinite (an
# exact match has infinite SQNR) or NaN are numbers or the strings "inf", "-inf", "nan".
_FIGURE = {"anyOf": [{"type": "number"}, {"enum": ["inf", "-inf", "nan"]}]}
_FRACTION = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}]}
_INT = {"type": "integer", "minimum": 0}
_STR = {"type": "string"}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_MODEL = _object(
    {
        "path": _STR,
        "file_bytes": _INT,
        "parameter_bytes": {"type": "object", "additionalProperties": _INT},
    }
)
_IO = {
    "type": "array",
    "items": _object(
        {"name": _STR, "reference_type": _STR, "candidate_type": _STR, "converted": {"type": "boolean"}}
    ),
}
COMPARE_JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "quantcli compare --json",
    **_object(
        {
            "schema_version": {"const": SCHEMA_VERSION},
            "command": {"const": "compare"},
            "quantcli_version": _STR,
            "passed": {"type": "boolean"},
            "exit_code": {"enum": [0, 1]},
            "reference": _MODEL,
            "candidate": _MODEL,
            "size": _object({"reference_bytes": _INT, "candidate_bytes": _INT, "ratio": {"type": "number"}}),
            "data": _object(
                {
                    "source": {"enum": ["directory", "random"]},
                    "path": _nullable(_STR),
                    "samples": _INT,
                    "labels": {"type": "boolean"},
                    "seed": _nullable({"type": "integer"}),
                }
            ),
            "io": _object({"inputs": _IO, "outputs": _IO}),
            "outputs": {
                "type": "array",
                "items": _object(
                    {
                        "name": _STR,
                        "samples": _INT,
                        "cosine_mean": _FIGURE,
                        "cosine_min": _FIGURE,
                        "max_abs_error": _FIGURE,
                        "mean_abs_error": _FIGURE,
                        "relative_error": _FIGURE,
                        "sqnr_db": _FIGURE,
                        "top1_agreement": _FRACTION,
                        "top5_overlap": _FRACTION,
                    }
                ),
            },
            "accuracy": _nullable(
                _object(
                    {
                        "reference": {"type": "number"},
                        "candidate": {"type": "number"},
                        "drop": {"type": "number"},
                    }
                )
            ),
            "per_layer": _nullable(
                _object(
                    {
                        "note": _STR,
                        "samples": _INT,
                        "runs": _INT,
                        "clean_sqnr_db": {"type": "number"},
                        "layers": {
                            "type": "array",
                            "items": _object(
                                {
                                    "rank": {"type": "integer", "minimum": 1},
                                    "tensor": _STR,
                                    "candidate_tensor": _STR,
                                    "candidate_node": _STR,
                                    "candidate_op_type": _STR,
                                    "node": _STR,
                                    "op_type": _STR,
                                    "sqnr_db": _FIGURE,
                                    "input_sqnr_db": _FIGURE,
                                    "added_db": _FIGURE,
                                    "cosine_mean": _FIGURE,
                                    "cosine_min": _FIGURE,
                                    "max_abs_error": _FIGURE,
                                    "mean_abs_error": _FIGURE,
                                    "inputs": {"type": "array", "items": _STR},
                                    "exclude_flag": _nullable(_STR),
                                }
                            ),
                        },
                        "unmatched": {
                            "type": "array",
                            "items": _object({"tensor": _STR, "node": _STR, "op_type": _STR, "reason": _STR}),
                        },
                    }
                )
            ),
            "latency": _nullable(
                _object(
                    {
                        "threads": {"type": "integer", "minimum": 1},
                        "rounds": {"type": "integer", "minimum": 30},
                        "warmup": _INT,
                        "reference_ms": {"type": "number"},
                        "candidate_ms": {"type": "number"},
                        "reference_min_ms": {"type": "number"},
                        "candidate_min_ms": {"type": "number"},
                        "ratio": _FIGURE,
                    }
                )
            ),
            "checks": {
                "type": "array",
                "items": _object(
                    {
                        "option": {
                            "enum": [
                                "--min-cosine",
                                "--max-abs-error",
                                "--min-sqnr",
                                "--min-top1-agreement",
                                "--max-accuracy-drop",
                                "--max-size-ratio",
                                "--max-latency-ratio",
                            ]
                        },
                        "output": _nullable(_STR),
                        "figure": _STR,
                        "value": _FIGURE,
                        "comparison": {"enum": [">=", "<="]},
                        "bound": {"type": "number"},
                        "passed": {"type": "boolean"},
                        "message": _STR,
                    }
                ),
            },
            "kernels": _object(
                {
                    "host": _object(
                        {
                            "kind": {"enum": ["vnni", "avx512", "avx2", "x86", "arm", "unknown"]},
                            "arch": _STR,
                            "avx2": {"type": "boolean"},
                            "avx512": {"type": "boolean"},
                            "vnni": {"type": "boolean"},
                            "u8s8_saturates": _nullable({"type": "boolean"}),
                            "source": _STR,
                        }
                    ),
                    "onnxruntime_version": _STR,
                    "same_as_exact": {"type": "boolean"},
                    "reason": _STR,
                    "exact_outputs": _nullable(
                        {
                            "type": "array",
                            "items": _object(
                                {
                                    "name": _STR,
                                    "cosine_mean": _FIGURE,
                                    "sqnr_db": _FIGURE,
                                    "top1_agreement": _FRACTION,
                                }
                            ),
                        }
                    ),
                }
            ),
            "warnings": {"type": "array", "items": _STR},
            "warning_codes": {"type": "array", "items": _STR},
            "seconds": {"type": "object", "additionalProperties": {"type": "number"}},
        }
    ),
}
