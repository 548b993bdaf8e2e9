"""The method registry and GRASPrune's recipes: one name per method, library defaults equal to
the documented (command-line) defaults (tests/cli/test_parts.py checks every option's)."""

import pytest

from grasp_deploy.core.errors import GraspError
from grasp_deploy.methods import METHODS, get_method
from grasp_deploy.methods.grasp_settings import DEFAULT_RECIPE, RECIPES, GraspSettings


def test_every_documented_method_is_registered():
    assert list(METHODS) == ["grasp", "magnitude", "wanda-sp", "flap", "taylor", "gisp",
                             "structprune"]
    assert [m.name for m in METHODS.values() if m.streams] == ["structprune"]
    assert not METHODS["magnitude"].uses_calibration and METHODS["grasp"].uses_calibration
    with pytest.raises(GraspError, match="--method 'nope' is unknown"):
        get_method("nope")


def test_library_defaults_are_the_default_recipe():
    assert DEFAULT_RECIPE == "best"
    assert GraspSettings() == GraspSettings.from_recipe("best")
    paper = GraspSettings.from_recipe("paper")
    assert (paper.init, paper.tie_break) == ("zero", "index")
    assert GraspSettings.from_recipe("paper", init="taylor", lr=None).init == "taylor"
    assert set(RECIPES["paper"]) == set(RECIPES["best"])


def test_a_name_is_registered_once():
    from grasp_deploy.methods import register

    with pytest.raises(GraspError, match="'grasp' is registered already"):
        register(METHODS["grasp"])


@pytest.mark.parametrize("overrides,flag", [(dict(lr=float("nan")), "--lr"),
                                            (dict(tau=-1.0), "--tau"),
                                            (dict(epochs=0), "--epochs"),
                                            (dict(init="random"), "--init")])
def test_bad_settings_name_their_flag(overrides, flag):
    with pytest.raises(GraspError, match=flag):
        GraspSettings.from_recipe("best", **overrides)
