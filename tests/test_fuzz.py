"""Mutated sample models fed to inspect, convert and compare: documented exit codes only.

Bounded: 200 cases, in-process through click's test runner, each under an alarm. Outcomes are
printed per mutation kind (`pytest -s tests/test_fuzz.py`).
"""

from __future__ import annotations

import collections
import random
import signal
from pathlib import Path

import onnx
from click.testing import CliRunner
from conftest import DATA, SAMPLES
from onnx import TensorProto

from quantcli.cli import main

CASES = 200
SECONDS_PER_CASE = 20
ALLOWED = {"inspect": {0, 2}, "convert": {0, 2, 3}, "compare": {0, 1, 2, 3}}
SOURCES = ("digits_mlp", "digits_cnn")


def _flip_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _remove_initializer(m: onnx.ModelProto, rng: random.Random) -> None:
    del m.graph.initializer[rng.randrange(len(m.graph.initializer))]


def _rename_edge(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    if rng.random() < 0.5 and node.input:
        node.input[rng.randrange(len(node.input))] = "renamed_edge"
    else:
        node.output[0] = "renamed_edge"


def _wrong_dtype(m: onnx.ModelProto, rng: random.Random) -> None:
    choice = rng.choice(
        [TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT8, TensorProto.STRING]
    )
    if rng.random() < 0.5:
        m.graph.initializer[rng.randrange(len(m.graph.initializer))].data_type = choice
    else:
        m.graph.input[0].type.tensor_type.elem_type = choice


def _wrong_shape(m: onnx.ModelProto, rng: random.Random) -> None:
    if rng.random() < 0.5:
        t = m.graph.initializer[rng.randrange(len(m.graph.initializer))]
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] += rng.choice([-1, 1, 7])
    else:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[rng.randrange(len(dims))].dim_value = rng.choice([3, 5, 100])


def _dangling_input(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice(list(m.graph.node))
    node.input.append("nowhere")


def _cycle(m: onnx.ModelProto, rng: random.Random) -> None:
    nodes = list(m.graph.node)
    if len(nodes) < 2:
        return
    i = rng.randrange(len(nodes) - 1)
    j = rng.randrange(i + 1, len(nodes))
    nodes[i].input[0] = nodes[j].output[0]


def _drop_node(m: onnx.ModelProto, rng: random.Random) -> None:
    del m.graph.node[rng.randrange(len(m.graph.node))]


def _bad_attribute(m: onnx.ModelProto, rng: random.Random) -> None:
    node = rng.choice([n for n in m.graph.node if n.attribute] or list(m.graph.node))
    if node.attribute:
        a = node.attribute[rng.randrange(len(node.attribute))]
        if a.type == onnx.AttributeProto.INT:
            a.i = rng.choice([-5, 0, 2, 99])
        elif a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[0] = rng.choice([-3, 0, 64])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = float("nan")
    else:
        node.op_type = "NoSuchOp"


STRUCTURAL = {
    "remove_initializer": _remove_initializer,
    "rename_edge": _rename_edge,
    "wrong_dtype": _wrong_dtype,
    "wrong_shape": _wrong_shape,
    "dangling_input": _dangling_input,
    "cycle": _cycle,
    "drop_node": _drop_node,
    "bad_attribute": _bad_attribute,
}
KINDS = ["flip_bytes", *STRUCTURAL]


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ARG001
    raise _Hang()


def make_case(k: int, tmp: Path) -> tuple[str, str, Path]:
    rng = random.Random(k)
    kind = KINDS[k % len(KINDS)]
    source = SOURCES[(k // len(KINDS)) % len(SOURCES)]
    data = (SAMPLES / f"{source}.onnx").read_bytes()
    if kind == "flip_bytes":
        mutated = _flip_bytes(data, rng)
    else:
        model = onnx.load_from_string(data)
        STRUCTURAL[kind](model, rng)
        mutated = model.SerializeToString()
    path = tmp / f"case{k:03d}.onnx"
    path.write_bytes(mutated)
    return kind, source, path


def run_case(k: int, path: Path, source: str, tmp: Path) -> tuple[str, int, str]:
    command = ("inspect", "convert", "compare")[(k + k // len(KINDS)) % 3]  # every kind meets every command
    if command == "inspect":
        args = ["inspect", str(path)]
    elif command == "convert":
        args = [
            "convert",
            str(path),
            "--calib",
            str(DATA / source / "calib"),
            "--calib-samples",
            "4",
            "--eval",
            str(DATA / source / "eval"),
            "--eval-samples",
            "4",
            "-o",
            str(tmp / f"out{k:03d}.onnx"),
        ]
    else:
        args = [
            "compare",
            str(SAMPLES / f"{source}.onnx"),
            str(path),
            "--data",
            str(DATA / source / "eval"),
            "--samples",
            "4",
        ]
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += f"\nuncaught {type(result.exception).__name__}: {result.exception}"
        return command, -1, output
    return command, result.exit_code, output


def test_fuzzed_models_get_documented_exit_codes(tmp_path) -> None:
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    parsed = 0
    failures = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for k in range(CASES):
            kind, source, path = make_case(k, tmp_path)
            try:
                onnx.load_from_string(path.read_bytes())
                parsed += 1
            except Exception:  # noqa: BLE001 - a mutation may break the protobuf itself
                pass
            signal.alarm(SECONDS_PER_CASE)
            try:
                command, code, output = run_case(k, path, source, tmp_path)
            except _Hang:
                command, code, output = ("?", -2, "hang")
            finally:
                signal.alarm(0)
            outcomes[kind][f"{command}:{code}"] += 1
            bad = code not in ALLOWED.get(command, set()) or "Traceback" in output
            if command == "convert" and code == 0:
                out = tmp_path / f"out{k:03d}.onnx"
                try:
                    onnx.checker.check_model(str(out), full_check=True)
                except Exception as exc:  # noqa: BLE001
                    bad, output = True, f"output fails the checker: {exc}"
            if bad:
                failures.append(f"case {k} {kind} on {source}, {command} -> {code}: {output.strip()[-400:]}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(f"\n{CASES} cases, {parsed} parse as ModelProto")
    for kind in KINDS:
        print(f"  {kind:<20} {dict(sorted(outcomes[kind].items()))}")
    assert parsed >= 0.8 * CASES
    assert not failures, "\n".join(failures[:10])
