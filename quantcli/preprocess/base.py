"""The pass protocol: a pass turns a model into a PassResult(model, modified)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx


@dataclass
class PassResult:
    """What one pass produced: the model, whether it changed, and notes for the report."""

    model: onnx.ModelProto
    modified: bool
    notes: list[str] = field(default_factory=list)


class Pass:
    """A preprocess pass; `in_place` declares whether it mutates the model it is given."""

    name = "pass"
    in_place = False

    def call(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError
