"""--reselect: StructPrune's pass 2 at another method's per-layer counts. A loaded model serves
it exactly as the layer stream does, and the job keeps the counts, the budget and the
calibration record while choosing the units anew."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.masking import multiplied
from grasp_deploy.core.plan import RECONSTRUCTION_FILE, load_plan
from grasp_deploy.core.projection import UnitLayout
from grasp_deploy.core.shape import ModelShape
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods import structprune
from grasp_deploy.methods.grasp import GraspSettings
from grasp_deploy.methods.layerwise import ModelLayers
from grasp_deploy.methods.reconstruct import ReconstructSettings
from grasp_deploy.methods.structprune import StructPruneSettings, choose_and_refit, segment_counts
from grasp_deploy.sources import models
from grasp_deploy.sources.stream import LayerStream

from conftest import save_tiny

FAMILIES = {"llama-gqa": dict(), "qwen3": dict(family="qwen3", head_dim=24),
            "qwen2-bias": dict(family="qwen2")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_loaded_model_gives_the_same_choice_and_refit_as_the_layer_stream(family, tmp_path):
    source = models.resolve_source(str(save_tiny(tmp_path / "m", seed=6, **FAMILIES[family])))
    model = models.load_model(source)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape, align=8)
    rng = np.random.default_rng(1)
    counts = {(g.layer, g.kind): int(rng.integers(1, g.size // g.align + 1)) * g.align
              for g in layout.segments}
    blocks = torch.randint(2, 300, (5, 20), generator=torch.Generator().manual_seed(2))
    s = StructPruneSettings(batch_blocks=2)
    stream = LayerStream(source, models.load_config(source), torch.float32, torch.device("cpu"))
    want = choose_and_refit(stream, shape, layout, counts, blocks, s, progress=False)
    got = choose_and_refit(ModelLayers(model), shape, layout, counts, blocks, s, progress=False)
    assert segment_counts(layout, got.mask) == counts
    np.testing.assert_array_equal(got.mask, want.mask)
    for name in want.replaced.keys():
        torch.testing.assert_close(got.replaced[name], want.replaced[name], rtol=1e-4, atol=1e-5)
    for a, b in zip(got.biases, want.biases, strict=True):
        np.testing.assert_allclose(a["o"], b["o"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a["down"], b["down"], rtol=1e-4, atol=1e-6)


def test_prune_reselect_keeps_the_counts_and_the_budget_and_changes_the_units(
        tiny_dir, text_file, tmp_path):
    common = dict(prune_ratio=0.4, model=str(tiny_dir), method="grasp", calib=f"file:{text_file}",
                  num_samples=6, seq_len=24, progress=False, align=1,
                  method_settings=GraspSettings.from_recipe("best", epochs=1))
    plain = run_prune(PruneConfig(out=tmp_path / "plain", **common)).plan
    chosen = run_prune(PruneConfig(out=tmp_path / "chosen", **common,
                                   post_steps=(ReconstructSettings(reselect=True),))).plan
    assert chosen.widths() == plain.widths()
    assert chosen.budget.prunable_kept == plain.budget.prunable_kept
    # the bias per layer the refit adds is counted, as for structprune
    assert chosen.budget.added > 0 and plain.budget.added == 0
    assert [lp.ffn_keep for lp in chosen.layers] != [lp.ffn_keep for lp in plain.layers]
    assert all(lp.ffn_scale is None and lp.down_bias is not None for lp in chosen.layers)
    saved = json.loads((tmp_path / "chosen" / "plan.json").read_text())
    assert "reselect" in saved["settings"]["reconstruct"]
    # the attention-sink position is left out of pass 2's least squares, and the plan says so
    assert saved["settings"]["reconstruct"]["skip"] == 1 == saved["reconstruction"]["skip"]
    # GRASPrune's 6 stage-A and 6 held-out stage-B blocks
    assert saved["reconstruction"]["blocks"] == 12
    assert (tmp_path / "chosen" / RECONSTRUCTION_FILE).is_file()
    run = json.loads((tmp_path / "chosen" / "run.json").read_text())
    assert run["seconds"]["reconstruct"] > 0 and "gates" in run["stages"]
    # the checkpoint is the plan: exported logits equal the masked, refitted model's
    run_export(ExportConfig(plan_dir=tmp_path / "chosen", out=tmp_path / "ckpt"))
    assert "(`--reselect`)" in (tmp_path / "ckpt" / "README.md").read_text()
    exported = models.load_model(models.resolve_source(str(tmp_path / "ckpt")))
    loaded = load_plan(tmp_path / "chosen")
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    ids = torch.randint(2, 300, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), multiplied(model, loaded.source.shape, loaded.multipliers()):
        masked = model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, masked, atol=1e-4, rtol=1e-4)


def test_pass_2_fits_only_the_positions_after_the_skipped_ones(tmp_path, monkeypatch):
    source = models.resolve_source(str(save_tiny(tmp_path / "m", seed=6)))
    model = models.load_model(source)
    shape = ModelShape.from_config(model.config)
    layout = UnitLayout.from_shape(shape, align=8)
    counts = {(g.layer, g.kind): g.size // 2 for g in layout.segments}
    blocks = torch.randint(2, 300, (4, 20), generator=torch.Generator().manual_seed(2))
    seen: list[int] = []
    gram = structprune._gram
    monkeypatch.setattr(structprune, "_gram",
                        lambda parts: seen.extend(p.shape[1] for p in parts) or gram(parts))
    runs = {k: choose_and_refit(ModelLayers(model), shape, layout, counts, blocks,
                                StructPruneSettings(batch_blocks=2, skip=k), progress=False)
            for k in (0, 3)}
    # two batches of blocks, o_proj and down_proj per layer: 20 positions, then 17
    per_run = 2 * 2 * shape.num_layers
    assert seen == [20] * per_run + [17] * per_run
    assert runs[3].reconstruction["skip"] == 3
    name = next(iter(runs[0].replaced.keys()))
    assert not torch.allclose(runs[0].replaced[name], runs[3].replaced[name])
    with pytest.raises(GraspError, match="--seq-len 20"):
        choose_and_refit(ModelLayers(model), shape, layout, counts, blocks,
                         StructPruneSettings(skip=20), progress=False)


def test_the_sink_skip_has_one_default_for_structprune_and_reselect():
    """It had two (structprune 0, --reselect 1); one option sets both, with one default."""
    from grasp_deploy.methods.layerwise import DEFAULT_SINK_SKIP

    assert StructPruneSettings().skip == ReconstructSettings().skip == DEFAULT_SINK_SKIP == 1
