"""The mode registry (quantize/modes.py): a mode is one declaration, and the pipeline, the option
checks, the plan file's checks and the report follow it with no mode name of their own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from conftest import DATA, ROOT, SAMPLES

from quantcli.api import ConvertOptions, convert
from quantcli.errors import BadPlanError, UsageError
from quantcli.graph import set_metadata
from quantcli.quantize import modes
from quantcli.quantize.modes import Mode, PlanJob, Planned
from quantcli.quantize.plan import FLOAT, NodePlan, QuantPlan
from quantcli.report.convert import _convert_rows


def _plan_toy(job: PlanJob) -> Planned:
    nodes = [NodePlan(n.name, n.op_type, FLOAT, "toy mode: every node float") for n in job.model.graph.node]
    return Planned(QuantPlan("toy", job.config, nodes, {}, 0))


def _rewrite_toy(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    set_metadata(model, "toy", str(len(plan.nodes)))
    return model


@pytest.fixture
def toy():
    """A mode added through the registry alone: its planner, rewriter and declaration here."""
    mode = modes.register(
        Mode(
            "toy",
            "in toy precision",
            (FLOAT,),
            (),
            _plan_toy,
            _rewrite_toy,
            warnings=lambda plan: ["toy warning"],
        )
    )
    yield mode
    modes.unregister("toy")


def test_a_mode_added_through_the_registry_converts_replays_and_reports(toy, tmp_path: Path) -> None:
    source = SAMPLES / "digits_mlp.onnx"
    out, plan_path = tmp_path / "toy.onnx", tmp_path / "toy.plan.json"
    r = convert(
        ConvertOptions(
            model=source,
            output=out,
            mode="toy",
            eval=DATA / "digits_mlp" / "eval",
            eval_samples=20,
            save_plan=plan_path,
            check_latency=False,
        )
    )
    assert r.mode == "toy" and r.exit_code == 0 and "toy warning" in r.warnings
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert {p.key: p.value for p in written.metadata_props}["toy"] == str(len(written.graph.node))
    assert r.agreement.outputs[0].cosine_mean == pytest.approx(1.0, abs=1e-6)
    assert r.compute_counts()["quantized"] == 0
    assert dict(_convert_rows(r))["compute nodes"].startswith(
        f"0 of {r.compute_counts()['total']} in toy precision"
    )
    assert json.loads(plan_path.read_text())["mode"] == "toy"
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    replay = tmp_path / "replay.onnx"  # the plan names its mode: --plan alone replays it
    again = convert(ConvertOptions(model=source, output=replay, plan=plan_path, check_latency=False))
    assert again.mode == "toy" and again.plan_replayed
    assert replay.read_bytes() == out.read_bytes()


def test_a_registered_mode_refuses_what_it_does_not_declare(toy, tmp_path: Path) -> None:
    source, out = SAMPLES / "digits_mlp.onnx", tmp_path / "toy.onnx"
    with pytest.raises(UsageError, match="--block-size applies to --mode weights-int4 only, not --mode toy"):
        ConvertOptions(model=source, output=out, mode="toy", block_size=64)
    with pytest.raises(UsageError, match="--activation-type applies to --mode static or --mode mixed only"):
        ConvertOptions(model=source, output=out, mode="toy", activation_type="int8")
    # a plan of this mode that asks its rewriter for a precision it does not declare
    plan = tmp_path / "bad.plan.json"
    convert(ConvertOptions(model=source, output=out, mode="toy", save_plan=plan, check_latency=False))
    data = json.loads(plan.read_text())
    data["nodes"][0]["precision"] = "int8"
    plan.write_text(json.dumps(data))
    with pytest.raises(BadPlanError, match=r"mode toy.*it takes float|precision"):
        convert(ConvertOptions(model=source, output=tmp_path / "b.onnx", plan=plan, check_latency=False))


def test_unregistered_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--mode toy: not one of static, dynamic"):
        ConvertOptions(model=SAMPLES / "digits_mlp.onnx", output=tmp_path / "x.onnx", mode="toy")


def test_every_mode_option_is_a_convert_option_and_api_names_no_mode() -> None:
    from quantcli.api import _CALIBRATION_FIELDS

    for option in modes.mode_options():  # a misspelt declaration would check nothing
        assert option in ConvertOptions.__dataclass_fields__ or option in _CALIBRATION_FIELDS, option
    api = (ROOT / "quantcli" / "api.py").read_text()
    named = [m for m in modes.names() if re.search(rf"[\"']{re.escape(m)}[\"']", api)]
    assert not named, f"api.py names modes {named}: declare what differs in quantize/modes.py"
