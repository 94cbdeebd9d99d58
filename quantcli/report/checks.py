"""Threshold checks rendered the same way by every command that gates on them (compare, convert):
text lines, a rich table, JSON entries, markdown and JUnit XML."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

from quantcli.report import number
from quantcli.thresholds import Check

NONE_SET = "checks: none set (thresholds: --min-cosine, --max-abs-error, --min-sqnr, ...)"


def check_lines(checks: list[Check]) -> list[str]:
    """A heading (how many passed) and one line per check."""
    if not checks:
        return [NONE_SET]
    failed = sum(not c.passed for c in checks)
    lines = [f"checks: {len(checks) - failed} passed, {failed} failed"]
    lines += [f"  {'pass' if c.passed else 'FAIL'}  {c.message}" for c in checks]
    return lines


def print_checks(console: Any, checks: list[Check]) -> None:  # noqa: ANN401 - a rich Console
    """The checks as a rich table (or the 'none set' line)."""
    from rich.table import Table

    if not checks:
        console.print(NONE_SET, highlight=False)
        return
    table = Table(title=check_lines(checks)[0])
    table.add_column("result")
    table.add_column("check")
    for c in checks:
        table.add_row("[green]pass[/]" if c.passed else "[bold red]FAIL[/]", c.message)
    console.print(table)


def check_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    """The `checks` array of a command's --json object."""
    return [
        {
            "option": f"--{c.option}",
            "output": c.output,
            "figure": c.figure,
            "value": number(c.value),
            "comparison": c.comparison,
            "bound": c.bound,
            "passed": c.passed,
            "message": c.message,
        }
        for c in checks
    ]


def verdict(checks: list[Check]) -> str:
    failed = sum(not c.passed for c in checks)
    if not checks:
        return "no thresholds set"
    return "all checks passed" if not failed else f"{failed} of {len(checks)} checks failed"


def md(text: str) -> str:
    return text.replace("|", "\\|")


def md_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


def check_md_table(checks: list[Check]) -> list[str]:
    return md_table(("result", "check"), [("pass" if c.passed else "**FAIL**", c.message) for c in checks])


def checks_to_junit(checks: list[Check], *, command: str, suite: str, seconds: float) -> str:
    """JUnit XML: one test case per check, a failure element for each check not met."""
    failures = sum(not c.passed for c in checks)
    total = f"{seconds:.3f}"
    suites = ET.Element("testsuites", name=f"quantcli {command}", tests=str(len(checks)), failures=str(failures), errors="0", time=total)  # fmt: skip
    node = ET.SubElement(
        suites,
        "testsuite",
        name=suite,
        tests=str(len(checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=total,
    )
    for c in checks:
        name = f"--{c.option}" + (f" {c.output}" if c.output is not None else "")
        case = ET.SubElement(node, "testcase", classname=f"quantcli.{command}", name=name, time="0")
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message, type="ThresholdNotMet").text = c.message
    buffer = io.BytesIO()
    ET.ElementTree(suites).write(buffer, encoding="utf-8", xml_declaration=True)
    return buffer.getvalue().decode("utf-8") + "\n"
