"""Wording shared by messages and reports."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """'1 sample', '2 samples'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
