"""Layer-wise reconstruction: never worse per layer, the budget unchanged, masked == exported,
the plan's file checked, and the job's --reconstruct for any method."""

from __future__ import annotations

import json

import pytest
import torch

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.masking import decoder_layers, multiplied
from grasp_deploy.core.plan import RECONSTRUCTION_FILE, load_plan
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods.layerwise import ModelLayers
from grasp_deploy.methods.reconstruct import ReconstructSettings, reconstruct_plan
from grasp_deploy.sources import models

from conftest import random_plan, save_tiny

FAMILIES = {"llama-gqa": dict(), "qwen3": dict(family="qwen3", head_dim=24),
            "qwen2-bias": dict(family="qwen2")}


def _blocks(n=6, t=24, seed=0):
    return torch.randint(2, 320, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    src = save_tiny(
        tmp_path_factory.mktemp(request.param) / "model", seed=5, **FAMILIES[request.param]
    )
    model = models.load_model(models.resolve_source(str(src)))
    plan = random_plan(model, str(src), ratio=0.5, seed=4)
    return src, model, plan


FIELDS = ("ffn", "kv", "o_weight", "down_weight", "o_bias", "down_bias")


def _use(mult, i, source):
    """Layer i of the live multipliers ``mult`` as in ``source`` (None: the dense layer)."""
    for f in FIELDS:
        getattr(mult, f)[i] = None if source is None else getattr(source, f)[i]


def _layer_errors(model, original, rebuilt, blocks):
    """Per layer, on the inputs the reconstructed path gives it: squared errors of the attention
    and the MLP outputs against the dense layer's on the same inputs, with the layer's original
    weights and with the refitted ones (the MLP sees the refitted attention's output, as in
    the reconstruction itself)."""
    x, kwargs = ModelLayers(model).embed(blocks)
    orig, new, live = original.multipliers(), rebuilt.multipliers(), rebuilt.multipliers()
    errors = []
    with torch.no_grad(), multiplied(model, rebuilt.source.shape, live):
        for i, layer in enumerate(decoder_layers(model)):
            kw, out = kwargs[i], {}
            normed = layer.input_layernorm(x)
            for name, source in (("dense", None), ("orig", orig), ("new", new)):
                _use(live, i, source)
                out[name, "attn"] = layer.self_attn(hidden_states=normed, **kw)[0]
            z = layer.post_attention_layernorm(x + out["new", "attn"])
            for name, source in (("dense", None), ("orig", orig), ("new", new)):
                _use(live, i, source)
                out[name, "mlp"] = layer.mlp(z)
            _use(live, i, new)
            step = layer(x, **kw)
            x = step[0] if isinstance(step, tuple) else step
            errors.append(
                {
                    f"{who} {part}": float(((out[who, part] - out["dense", part]) ** 2).sum())
                    for who in ("orig", "new")
                    for part in ("attn", "mlp")
                }
            )
    return errors


def test_reconstruction_never_increases_a_layers_error_on_its_calibration_blocks(family):
    src, model, plan = family
    blocks = _blocks()
    rebuilt = reconstruct_plan(plan, model, blocks, progress=False)
    for i, e in enumerate(_layer_errors(model, plan, rebuilt, blocks)):
        for part in ("attn", "mlp"):
            assert e[f"new {part}"] <= e[f"orig {part}"] * (1 + 1e-6), (i, e)
        assert e["new attn"] < 0.9 * e["orig attn"] and e["new mlp"] < 0.9 * e["orig mlp"], (i, e)


def test_masked_reconstructed_equals_exported_and_the_budget_is_unchanged(family, tmp_path):
    src, model, plan = family
    rebuilt = reconstruct_plan(plan, model, _blocks(), progress=False)
    assert rebuilt.budget == plan.budget and rebuilt.widths() == plan.widths()
    assert all(lp.ffn_scale is None for lp in rebuilt.layers)  # absorbed
    assert [lp.kv_scale for lp in rebuilt.layers] == [lp.kv_scale for lp in plan.layers]
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    rebuilt.save(plan_dir)
    loaded = load_plan(plan_dir)
    assert loaded.reconstruction["sha256"] == rebuilt.reconstruction["sha256"]
    assert all(torch.equal(loaded.replaced[k], rebuilt.replaced[k]) for k in rebuilt.replaced)
    ckpt = tmp_path / "ckpt"
    run_export(ExportConfig(plan_dir=plan_dir, out=ckpt))
    exported = models.load_model(models.resolve_source(str(ckpt)))
    ids = _blocks(2, 20, seed=9)
    with torch.no_grad():
        with multiplied(model, loaded.source.shape, loaded.multipliers()):
            masked = model(ids).logits
        unreconstructed = None
        with multiplied(model, plan.source.shape, plan.multipliers()):
            unreconstructed = model(ids).logits
        out = exported(ids).logits
    torch.testing.assert_close(out, masked, atol=1e-4, rtol=1e-4)
    assert (out - unreconstructed).abs().max() > 1e-3  # the refit changed the model
    for i in range(len(loaded.layers)):
        o = exported.model.layers[i].self_attn.o_proj.weight
        torch.testing.assert_close(o, loaded.replaced[f"model.layers.{i}.self_attn.o_proj.weight"])


def test_a_reconstructed_plan_refuses_a_missing_or_edited_weights_file(family, tmp_path):
    src, model, plan = family
    rebuilt = reconstruct_plan(plan, model, _blocks(4, 16), progress=False)
    rebuilt.save(tmp_path)
    data = bytearray((tmp_path / RECONSTRUCTION_FILE).read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / RECONSTRUCTION_FILE).write_bytes(bytes(data))
    with pytest.raises(GraspError, match="does not match the sha256"):
        load_plan(tmp_path)
    (tmp_path / RECONSTRUCTION_FILE).unlink()
    with pytest.raises(GraspError, match="is missing"):
        load_plan(tmp_path)


@pytest.mark.parametrize("method", ["magnitude", "flap", "grasp"])
def test_prune_reconstruct_for_any_method(tiny_dir, text_file, tmp_path, method):
    """--reconstruct after a data-free method, one with compensation biases, and GRASPrune:
    the plan records it, the file sits beside plan.json, and its logits beat the plain plan's
    fit to the dense model on the calibration text."""
    common = dict(prune_ratio=0.4, model=str(tiny_dir), method=method,
                  calib=f"file:{text_file}", num_samples=6, seq_len=24, progress=False)
    if method == "grasp":
        from grasp_deploy.methods.grasp import GraspSettings
        common["method_settings"] = GraspSettings.from_recipe("best", epochs=1)
    plain = run_prune(PruneConfig(out=tmp_path / "plain", **common)).plan
    rebuilt = run_prune(PruneConfig(out=tmp_path / "rebuilt", post_steps=(ReconstructSettings(),),
                                    **common)).plan
    saved = json.loads((tmp_path / "rebuilt" / "plan.json").read_text())
    assert saved["reconstruction"]["ffn_scales"] == "absorbed into down_proj"
    # every calibration block the run has: GRASPrune's 6 held-out stage-B blocks too
    assert saved["reconstruction"]["blocks"] == (12 if method == "grasp" else 6)
    assert saved["settings"]["reconstruct"]["ridge"] == 1e-3
    assert (tmp_path / "rebuilt" / RECONSTRUCTION_FILE).is_file()
    assert "reconstruction" not in json.loads((tmp_path / "plain" / "plan.json").read_text())
    assert [lp.ffn_keep for lp in rebuilt.layers] == [lp.ffn_keep for lp in plain.layers]
    run = json.loads((tmp_path / "rebuilt" / "run.json").read_text())
    assert run["seconds"]["reconstruct"] > 0
