"""Typed user-facing failures, each carrying its stable exit code (ARCHITECTURE.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every quantcli command; CI jobs depend on them, so they never change."""

    OK = 0
    THRESHOLD_NOT_MET = 1
    BAD_INPUT = 2
    CANNOT_DO = 3
    INTERNAL = 70  # a quantcli bug (EX_SOFTWARE); the message asks for a report
    INTERRUPTED = 130
    TERMINATED = 143


class QuantcliError(Exception):
    """Base of every failure the CLI reports as one line instead of a traceback."""

    exit_code: ExitCode = ExitCode.BAD_INPUT
    code: str = "bad-input"  # stable name of the failure kind (`--json`: error.code)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadModelError(QuantcliError):
    """The model file is missing, unreadable or not a valid ONNX model."""

    exit_code = ExitCode.BAD_INPUT
    code = "bad-model"


class BadDataError(QuantcliError):
    """Calibration or evaluation samples are missing or do not match the model's inputs."""

    exit_code = ExitCode.BAD_INPUT
    code = "bad-data"


class UsageError(QuantcliError):
    """Options that are invalid or contradict each other, or an unusable output path."""

    exit_code = ExitCode.BAD_INPUT
    code = "usage"


class BadPlanError(QuantcliError):
    """A QuantPlan file that cannot be read or does not fit the model."""

    exit_code = ExitCode.BAD_INPUT
    code = "bad-plan"


class UnsupportedModelError(QuantcliError):
    """Valid ONNX that cannot be done as asked (onnxruntime cannot load it, unsupported opset...)."""

    exit_code = ExitCode.CANNOT_DO
    code = "cannot-do"


class InternalError(QuantcliError):
    """A failure quantcli detected in its own result (the quantized model fails onnx.checker or
    onnxruntime while the input passes): a bug, exit 70 like any unexpected exception."""

    exit_code = ExitCode.INTERNAL


class Notice(str):
    """A warning that does not stop the command: its one-line text, plus a stable `code` that
    tests and CI scripts match on instead of the wording (`--json`: "warning_codes")."""

    code: str

    def __new__(cls, code: str, text: str) -> Notice:
        notice = super().__new__(cls, text)
        notice.code = code
        return notice


def notice_code(warning: str) -> str:
    """The code of a warning (Notice), or "other" for a plain string."""
    return getattr(warning, "code", "other")
