import json

import numpy as np
import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.plan import Plan, SourceModel, budget_report, layers_from_mask, load_plan
from grasp_deploy.core.projection import UnitLayout, project
from grasp_deploy.core.shape import ModelShape

from conftest import tiny_config


def make_plan(with_scales=True):
    shape = ModelShape.from_config(tiny_config())
    layout = UnitLayout.from_shape(shape)
    rng = np.random.default_rng(0)
    mask = project(rng.random(layout.num_units), layout, int(0.6 * layout.total_cost()))
    scales = (1 + 0.5 * np.tanh(rng.normal(size=layout.num_units))).astype(np.float32)
    return Plan(
        method="grasp",
        settings={"epochs": 1},
        source=SourceModel("tiny", "sha256:x", shape),
        budget=budget_report(layout, mask, 0.4, 200_000),
        layers=layers_from_mask(layout, mask, scales if with_scales else None),
        calibration={"source": "self"},
        seed=3,
        versions={"torch": "x"},
    )


def test_json_round_trip_is_exact(tmp_path):
    plan = make_plan()
    plan.save(tmp_path)
    again = load_plan(tmp_path)
    assert again == plan
    assert json.loads((tmp_path / "plan.json").read_text())["budget"]["achieved_ratio"] == \
        pytest.approx(plan.budget.achieved_ratio)
    assert load_plan(tmp_path / "plan.json") == plan


def test_multipliers_put_scales_on_kept_units_only():
    plan = make_plan()
    mult = plan.multipliers()
    for i, layer in enumerate(plan.layers):
        ffn = mult.ffn[i]
        assert int((ffn != 0).sum()) == len(layer.ffn_keep)
        assert ffn[list(layer.ffn_keep)].tolist() == pytest.approx(list(layer.ffn_scale))
    plain = plan.multipliers(with_scales=False)
    assert set(plain.kv[0].tolist()) <= {0.0, 1.0}


def test_invalid_plans_are_rejected(tmp_path):
    plan = make_plan()
    data = plan.to_json()
    data["layers"][0]["ffn_keep"] = [5, 2]
    with pytest.raises(ValueError, match="ascending"):
        Plan.from_json(data)
    (tmp_path / "plan.json").write_text(json.dumps(data))
    with pytest.raises(GraspError, match="malformed"):
        load_plan(tmp_path)
    with pytest.raises(GraspError, match="no plan"):
        load_plan(tmp_path / "missing")
