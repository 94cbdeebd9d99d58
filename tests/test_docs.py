"""The documentation says what the code does: docs/cli.md is click's own help, every `quantcli ...`
command shown uses options that exist, every link resolves, the README's Python runs as written, and
its test command is the one CI runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from quantcli.cli import main
from quantcli.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
GENERATOR = ROOT / "scripts" / "gen_cli_docs.py"

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(quantcli [^`]+)`")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str, languages: tuple[str, ...]) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang in languages]


def _without_code(text: str) -> str:
    return FENCE.sub("", text)


def test_cli_md_is_what_the_generator_writes() -> None:
    expected = _generator().render()
    actual = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    hint = (
        "docs/cli.md is out of date with quantcli/cli.py: run `python scripts/gen_cli_docs.py` and commit it"
    )
    if f"(click {version('click')}," in actual:
        assert actual == expected, hint
    else:  # another click version wraps and words its help a little differently: compare the words
        words = lambda text: re.sub(r"\(click [^,]+,", "", " ".join(text.split()))  # noqa: E731
        assert words(actual) == words(expected), hint


def _option_names(command: click.Command) -> set[str]:
    ctx = click.Context(command, info_name=command.name, **command.context_settings)
    names = {"-h", "--help"}
    for param in command.get_params(ctx):
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def _invocations(text: str) -> list[list[str]]:
    """Every `quantcli ...` command line in the page's shell code blocks and inline code spans."""
    lines = []
    for block in _blocks(text, ("bash", "sh", "shell", "console", "")):
        lines += block.replace("\\\n", " ").splitlines()
    lines += INLINE.findall(_without_code(text))
    found = []
    for line in lines:
        for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
            words = shlex.split(part, comments=True)
            if words and words[0] == "quantcli":
                found.append(words)
    return found


def unknown_options(text: str) -> list[str]:
    """`quantcli COMMAND --flag` uses in `text` whose command or flag does not exist."""
    problems = []
    for words in _invocations(text):
        line = " ".join(words)
        if len(words) < 2 or words[1] in ("--help", "-h", "--version") or words[1].isupper():
            continue  # `quantcli COMMAND --help`: a placeholder, not a command
        command = main.commands.get(words[1])
        if command is None:
            problems.append(f"{line}: no command {words[1]!r}")
            continue
        known = _option_names(command)
        for word in words[2:]:
            flag = word.split("=", 1)[0]
            if flag.startswith("-") and flag not in ("-", "--") and flag not in known:
                problems.append(f"{line}: {words[1]} has no option {flag}")
    return problems


def test_the_option_check_can_fail() -> None:
    text = (
        "```bash\nquantcli convert m.onnx --calib d --no-such-flag -o out.onnx\nquantcli frobnicate x\n```\n"
    )
    assert unknown_options(text) == [
        "quantcli convert m.onnx --calib d --no-such-flag -o out.onnx: convert has no option --no-such-flag",
        "quantcli frobnicate x: no command 'frobnicate'",
    ]
    assert (
        unknown_options("`quantcli inspect m.onnx --nodes --json` and `quantcli compare a b --per-layer`")
        == []
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_shown_use_options_that_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert unknown_options(text) == []


def test_readme_shows_every_command() -> None:
    shown = {words[1] for words in _invocations(README.read_text(encoding="utf-8"))}
    assert set(main.commands) <= shown


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _without_code(path.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    text = _without_code(page.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT)}")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert broken == []


def test_readme_lists_every_exit_code() -> None:
    table = re.findall(r"^\| ([\d /]+) \|", README.read_text(encoding="utf-8"), re.M)
    codes = {int(c) for row in table for c in row.split("/")}
    assert codes == {int(c) for c in ExitCode}


def test_readme_test_command_is_the_ci_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    command = ci[ci.index("# The README's test command:") + 1].strip()
    assert f"```bash\n{command}\n```" in README.read_text(encoding="utf-8")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    skip = {".git", ".venv", ".venv-ci", "__pycache__", ".pytest_cache", ".ruff_cache"}
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath) / name
            st = path.stat()
            tree[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return tree


def test_readme_python_runs_as_written() -> None:
    blocks = _blocks(README.read_text(encoding="utf-8"), ("python",))
    assert blocks, "README.md has no ```python block"
    before = _tree(ROOT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    for code in blocks:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"README's Python example failed:\n{code}\n{done.stderr}"
    assert _tree(ROOT) == before, "README's Python example wrote into the repository"


def _documented_fields(section: str) -> set[str]:
    """The top-level keys a docs/json.md section's field table names (`file.bytes` -> file)."""
    text = (ROOT_DOCS / "json.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    fields: set[str] = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            for name in re.findall(r"`([^`]+)`", first):
                fields.add(name.split(".")[0].removesuffix("[]"))
    return fields


ROOT_DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_convert_json_fields_are_the_documented_ones(converted) -> None:  # noqa: ANN001
    from quantcli.report.convert import convert_to_dict

    printed = set(convert_to_dict(converted["digits_cnn"].result))
    assert printed == _documented_fields("convert"), "docs/json.md's convert table and convert --json differ"


def test_inspect_json_fields_are_the_documented_ones() -> None:
    from quantcli.inspect import inspect_model
    from quantcli.report.inspect import inspect_to_dict

    model = Path(__file__).resolve().parent.parent / "sample_models" / "digits_cnn.onnx"
    printed = set(inspect_to_dict(inspect_model(model, nodes=True, tensors=True, use_ort=False)))
    assert printed == _documented_fields("inspect"), "docs/json.md's inspect table and inspect --json differ"
