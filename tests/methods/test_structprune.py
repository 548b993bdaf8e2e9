"""StructPrune: the streamed model equals the loaded one, the allocation's two limits, the
budget, ADMM's choice, one layer in memory at a time, and the job end to end."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.plan import load_plan
from grasp_deploy.core.projection import UnitLayout, keep_budget
from grasp_deploy.core.shape import FFN, KV, ModelShape
from grasp_deploy.jobs import loading
from grasp_deploy.jobs.evaluate import EvalConfig, run_eval
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.prune import PruneConfig, run_prune
from grasp_deploy.methods.structprune import StructPruneSettings, admm_keep, allocate, kept_counts
from grasp_deploy.sources import models
from grasp_deploy.sources.stream import LayerStream

from conftest import save_tiny, tiny_config

FAMILIES = {"llama-gqa": dict(), "qwen3": dict(family="qwen3", head_dim=24),
            "qwen2-bias": dict(family="qwen2")}


@pytest.fixture(scope="module", params=list(FAMILIES))
def source(request, tmp_path_factory):
    path = save_tiny(
        tmp_path_factory.mktemp(request.param) / "m", seed=3, **FAMILIES[request.param]
    )
    return models.resolve_source(str(path))


@torch.no_grad()
def test_streamed_layers_reproduce_the_loaded_model(source):
    """Embedding, captured kwargs and layers read one at a time give the loaded model's hidden
    states; the fingerprint and parameter count are the loaded model's."""
    model = models.load_model(source)
    stream = LayerStream(source, models.load_config(source), torch.float32, torch.device("cpu"))
    assert stream.fingerprint() == models.fingerprint(model)
    assert stream.parameter_count() == models.count_parameters(model)
    ids = torch.randint(2, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    x, kwargs = stream.embed(ids)
    for i in range(stream.num_layers):
        out = stream.layer(i)(x, **kwargs[i])
        x = out[0] if isinstance(out, tuple) else out
    want = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    final_norm = model.model.norm
    torch.testing.assert_close(final_norm(x), want, rtol=1e-5, atol=1e-5)


def _layout():
    from grasp_deploy.core.shape import ModelShape

    from conftest import tiny_model

    shape = ModelShape.from_config(tiny_model(num_hidden_layers=4).config)
    return UnitLayout.from_shape(shape, align=8)


def test_allocation_limits_and_budget():
    """T = inf removes the same fraction everywhere; small T takes it from the lowest-energy
    modules first; every T removes the budget's share (by cost) before rounding."""
    layout = _layout()
    rng = np.random.default_rng(0)
    energy = np.concatenate([rng.uniform(1, 2, seg.size) * 10.0 ** seg.layer
                             for seg in layout.segments])
    cost = np.array([seg.size * seg.unit_cost for seg in layout.segments])
    for t in (float("inf"), 4.0, 1.0, 0.05):
        f = allocate(layout, energy, 0.4, t, 0.9, 0.3)
        assert float((f * cost).sum()) == pytest.approx(0.4 * cost.sum(), rel=1e-6)
        if t == float("inf"):
            np.testing.assert_allclose(f, 0.4)
    cold = allocate(layout, energy, 0.4, 0.05, 0.9, 0.3)
    ffn = [m for m, seg in enumerate(layout.segments) if seg.kind == FFN]
    assert cold[ffn[0]] == pytest.approx(0.7)  # layer 0 has the lowest energies: at its cap
    assert cold[ffn[-1]] < 0.01  # layer 3 the highest: nearly untouched


def test_kept_counts_fill_the_budget_in_aligned_blocks():
    layout = _layout()
    budget = keep_budget(0.45, layout.total_cost())
    for f in (np.full(len(layout.segments), 0.45), np.linspace(0.1, 0.8, len(layout.segments))):
        counts = kept_counts(layout, f, budget)
        kept = sum(counts[(s.layer, s.kind)] * s.unit_cost for s in layout.segments)
        assert kept <= budget
        assert budget - kept < min(s.align * s.unit_cost for s in layout.segments)
        for s in layout.segments:
            assert counts[(s.layer, s.kind)] % s.align == 0 and counts[(s.layer, s.kind)] >= s.align


def test_admm_keeps_the_groups_that_carry_the_output():
    """Groups whose columns are zero in W contribute nothing: ADMM drops them first."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 24, generator=g)
    w = torch.randn(8, 24, generator=g)
    groups = torch.arange(24).view(6, 4)
    w[:, groups[[1, 4]].reshape(-1)] = 0.0
    kept = admm_keep(w, (a.T @ a).double(), groups, 4, StructPruneSettings())
    assert kept.tolist() == [0, 2, 3, 5]


def test_structprune_streams_one_layer_at_a_time(tiny_dir, text_file, tmp_path, monkeypatch):
    """The job never loads the whole model, and at most one decoder layer is alive at once;
    the plan meets the budget and carries its refitted weights; eval of the plan equals eval
    of its export."""
    monkeypatch.setattr(loading, "load_model", _refuse)
    monkeypatch.setattr(models, "load_model", _refuse)
    alive, peak, real = [0], [0], LayerStream.layer

    def counted(self, i):
        layer = real(self, i)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(layer, lambda: alive.__setitem__(0, alive[0] - 1))
        return layer
    monkeypatch.setattr(LayerStream, "layer", counted)
    cfg = PruneConfig(prune_ratio=0.4, out=tmp_path / "plan", model=str(tiny_dir),
                      method="structprune", calib=f"file:{text_file}", num_samples=6, seq_len=32,
                      progress=False)
    result = run_prune(cfg)
    assert "Infinity" not in (tmp_path / "plan" / "plan.json").read_text()  # strict JSON
    assert peak[0] == 1
    plan = load_plan(tmp_path / "plan")
    assert plan.budget.prunable_kept <= keep_budget(0.4, plan.budget.prunable_dense)
    assert plan.reconstruction["by"] == "structprune pass 2" and plan.replaced is not None
    assert plan.settings["structprune"]["temperature"] == "inf"
    assert result.plan.source.fingerprint == plan.source.fingerprint

    monkeypatch.undo()
    run_export(ExportConfig(plan_dir=tmp_path / "plan", out=tmp_path / "ckpt", model=str(tiny_dir)))
    data = f"file:{text_file}"
    masked = run_eval(EvalConfig(model=str(tiny_dir), plan=tmp_path / "plan", data=data,
                                 seq_len=64, max_windows=3, progress=False, dtype="float32"))
    exported = run_eval(EvalConfig(model=str(tmp_path / "ckpt"), data=data, seq_len=64,
                                   max_windows=3, progress=False, dtype="float32"))
    assert masked.perplexity == pytest.approx(exported.perplexity, rel=1e-4)


def _refuse(*_a, **_k):
    raise AssertionError("structprune loaded the whole model")


@pytest.mark.parametrize("kwargs, message", [
    (lambda: dict(calib="self"), "--calib self"),
    (lambda: dict(method_settings=StructPruneSettings(temperature=0.0)), "--temperature 0.0"),
    (lambda: dict(method_settings=StructPruneSettings(temperature=float("nan"))),
     "--temperature nan"),
    (lambda: dict(method_settings=StructPruneSettings(ridge=-1.0)), "--reconstruct-ridge -1"),
    (lambda: dict(method_settings=StructPruneSettings(skip=-1)), "--sink-skip -1"),
])
def test_bad_structprune_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(GraspError, match=message):
        PruneConfig(prune_ratio=0.3, out=tmp_path / "p", method="structprune", **kwargs())


@pytest.mark.parametrize("reselect, named", [(False, "--reconstruct"), (True, "--reselect")])
def test_a_refitting_post_step_after_structprune_is_refused_by_the_flag_given(
        tmp_path, reselect, named):
    """structprune ends with its own refit: --reconstruct was silently turned into its ridge
    and --reselect silently dropped; both are now one error naming the flag given."""
    from grasp_deploy.methods.reconstruct import ReconstructSettings

    with pytest.raises(GraspError, match=f"^{named} does not combine with --method structprune"):
        PruneConfig(prune_ratio=0.3, out=tmp_path / "p", method="structprune",
                    post_steps=(ReconstructSettings(reselect=reselect),))



def test_kept_counts_hold_a_kv_budget_and_give_the_freed_parameters_to_the_ffn():
    shape = ModelShape.from_config(tiny_config(num_hidden_layers=4, num_attention_heads=8,
                                               num_key_value_heads=4, head_dim=8))
    layout = UnitLayout.from_shape(shape)
    budget = keep_budget(0.3, layout.total_cost())
    f = np.full(len(layout.segments), 0.3)
    free = kept_counts(layout, f, budget)
    capped = kept_counts(layout, f, budget, kv_budget=8)
    def heads(c):
        return sum(n for (_, kind), n in c.items() if kind == KV)

    def ffn(c):
        return sum(n for (_, kind), n in c.items() if kind == FFN)

    assert heads(free) > 8 >= heads(capped)
    assert ffn(capped) > ffn(free)
    cost = sum(capped[(g.layer, g.kind)] * g.unit_cost for g in layout.segments)
    assert budget - shape.unit_cost(FFN) < cost <= budget
