"""Cost tables measured on the CPU a model will run on: `quantcli measure-costs` writes one,
`convert --cost-table FILE` plans for speed with it in place of the shipped table of its kind."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import DATA, SAMPLES, convert_sample

from quantcli.api import ConvertOptions
from quantcli.cli import main
from quantcli.errors import BadDataError, UsageError
from quantcli.quantize import cost_measure
from quantcli.quantize.speed import CostTable, load_table

TINY = cost_measure.Grid(
    channels=(8,), spatial=(7,), matmul_rows=(1,), matmul_dims=(32,), shuffles=((16, 7),)
)


def test_measure_costs_writes_a_table_the_planner_reads(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost_measure, "QUICK", TINY)  # a real measurement, of one shape per class
    out = tmp_path / "costs.json"
    result = CliRunner().invoke(main, ["measure-costs", "-o", str(out), "--quick", "--budget", "0", "--json"])
    assert result.exit_code == 0, result.output
    said = json.loads(result.output)
    assert said["kind"] == "avx2" and said["output"] == str(out)  # the tests pin an AVX2 host
    table = CostTable.from_dict(json.loads(out.read_text()))
    assert table.measured["command"] == f"quantcli measure-costs --kind avx2 -o {out} --quick --budget 0"
    assert set(table.ops) == {*cost_measure.CONV_KINDS, "MatMul"} - {"grouped1", "grouped3"}  # c >= 16 only
    assert said["shapes"] == sum(len(rows) for rows in table.ops.values()) == 5
    for rows in table.ops.values():
        assert all(r["float_us"] > 0 and r["int_us"] > 0 for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # no temporary left behind


def priced(tmp_path, name: str, int_per_float: float) -> str:
    """The shipped AVX2 table with every integer time set to `int_per_float` x the float one."""
    data = json.loads(json.dumps({"schema": 1, **_shipped()}))
    for rows in data["ops"].values():
        for row in rows:
            row["int_us"] = row["float_us"] * int_per_float
            row["crossing_us"] = 0.05
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _shipped() -> dict:
    table = load_table("avx2")
    return {"kind": table.kind, "measured": table.measured, "ops": table.ops, "layout": table.layout}


def speed_float(converted) -> dict[str, str]:  # noqa: ANN001
    return {n.name: n.reason for n in converted.result.nodes if n.reason.startswith("float for speed")}


def test_convert_plans_for_speed_with_the_given_table(tmp_path) -> None:
    """A table where integer is 10x slower keeps every priced node float, and says which file
    decided; one where it is 10x faster keeps none; the shipped table lies between."""
    slow = convert_sample(
        "digits_cnn", tmp_path, "slow", target_cpu="avx2", cost_table=priced(tmp_path, "slow.json", 10)
    )
    fast = convert_sample(
        "digits_cnn", tmp_path, "fast", target_cpu="avx2", cost_table=priced(tmp_path, "fast.json", 0.1)
    )
    shipped = convert_sample("digits_cnn", tmp_path, "shipped", target_cpu="avx2")
    compute = [n.name for n in slow.result.nodes if n.op_type in ("Conv", "Gemm")]
    assert set(speed_float(slow)) == set(compute) and len(compute) >= 4
    assert all("slow.json" in why and "10.0x slower" in why for why in speed_float(slow).values())
    assert speed_float(fast) == {}
    assert slow.result.speed.tables == [
        f"avx2 (onnxruntime {load_table('avx2').measured['onnxruntime']}, "
        f"{load_table('avx2').measured['date']}, slow.json)"
    ]
    assert set(speed_float(shipped)) <= set(compute)
    assert all("slow.json" not in why for why in speed_float(shipped).values())


def options(tmp_path, **kwargs) -> ConvertOptions:  # noqa: ANN003
    return ConvertOptions(
        model=SAMPLES / "digits_cnn.onnx",
        output=tmp_path / "out.onnx",
        calib=DATA / "digits_cnn" / "calib",
        **kwargs,
    )


def test_a_bad_cost_table_is_refused_before_any_work(tmp_path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(BadDataError, match=r"broken.json: not a quantcli cost table"):
        options(tmp_path, cost_table=broken)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"schema": 1, "kind": "avx2", "ops": {"MatMul": [{"m": 1}]}, "layout": {}}))
    with pytest.raises(
        BadDataError, match=r"partial.json: not a quantcli cost table \(a MatMul timing lacks"
    ):
        options(tmp_path, cost_table=partial)
    with pytest.raises(BadDataError, match=r"missing.json: cannot read the cost table"):
        options(tmp_path, cost_table=tmp_path / "missing.json")
    plain = priced(tmp_path, "plain.json", 1.0)
    (tmp_path / "vnni.json").write_text(
        json.dumps({**json.loads((tmp_path / "plain.json").read_text()), "kind": "vnni"})
    )
    with pytest.raises(UsageError, match=r"measured on vnni; --target-cpu avx2 runs on avx2"):
        options(tmp_path, cost_table=tmp_path / "vnni.json", target_cpu="avx2")
    options(tmp_path, cost_table=tmp_path / "vnni.json")  # --target-cpu any covers vnni
    with pytest.raises(UsageError, match=r"--cost-table applies to --mode static or --mode mixed only"):
        options(tmp_path, cost_table=plain, mode="dynamic")
    with pytest.raises(UsageError, match=r"--cost-table prices the speed plan"):
        options(tmp_path, cost_table=plain, speed_plan=False)
