"""The model card says what was done to the kept weights, from the plan's settings."""

from __future__ import annotations

import pytest

from grasp_deploy.checkpoint.card import weights_note

REFIT = {"ridge": 1e-3}


@pytest.mark.parametrize("method, settings, says", [
    ("grasp", {"scale_epochs": 1}, "Stage-B scales are folded"),
    ("grasp", {"scale_epochs": 1, "reconstruct": REFIT}, "(`--reconstruct`)"),
    ("grasp", {"scale_epochs": 1, "reconstruct": {**REFIT, "reselect": "yes"}}, "(`--reselect`)"),
    ("structprune", {"structprune": {}}, "chosen by ADMM"),
    ("magnitude", {}, None),
])
def test_weights_note(method, settings, says):
    note = weights_note({"method": method, "settings": settings})
    if says is None:
        assert note == ""
    else:
        assert says in note
        assert ("Stage-B" in note) == (says == "Stage-B scales are folded")
