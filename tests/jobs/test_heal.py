"""Healing by distillation on tiny models: the KL to the teacher falls on held-out blocks, the
checkpoint keeps its shapes, files and budget (with a healing record), a resumed run ends where
an uninterrupted one does, and bad input is one error with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from grasp_deploy.checkpoint.read import inspect_checkpoint
from grasp_deploy.cli import main
from grasp_deploy.core.errors import GraspError
from grasp_deploy.jobs import heal as heal_job
from grasp_deploy.jobs import heal_data
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.jobs.heal import HealConfig, run_heal
from grasp_deploy.sources import models

from conftest import listing, make_text, random_plan, save_tiny

QUICK = dict(lr=3e-3, batch_size=2, seq_len=32, held_out=4, warmup=2, dtype="float32",
             progress=False)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """(dense dir, pruned checkpoint, training text) for a tiny model pruned by 45%."""
    root = tmp_path_factory.mktemp("heal")
    dense = save_tiny(root / "dense", seed=3)
    model = models.load_model(models.resolve_source(str(dense)))
    plan = random_plan(model, str(dense), ratio=0.45, seed=2)
    (root / "plan").mkdir()
    plan.save(root / "plan")
    run_export(ExportConfig(plan_dir=root / "plan", out=root / "ckpt"))
    text = root / "train.txt"
    text.write_text(make_text(n_words=4000, seed=1))
    return dense, root / "ckpt", text


def test_healing_lowers_the_held_out_kl_and_keeps_shapes_and_budget(pruned, tmp_path):
    dense, ckpt, text = pruned
    result = run_heal(HealConfig(checkpoint=ckpt, out=tmp_path / "healed", data=f"file:{text}",
                                 steps=30, **QUICK), say=lambda _m: None)
    kl = result.record["held_out_kl"]
    print(f"held-out KL {kl['before']:.4f} -> {kl['after']:.4f}")
    assert kl["after"] < 0.8 * kl["before"], kl
    assert heal_job.warning(result.record) is None
    old, new = load_file(str(ckpt / "model.safetensors")), load_file(
        str(tmp_path / "healed" / "model.safetensors"))
    assert {k: v.shape for k, v in old.items()} == {k: v.shape for k, v in new.items()}
    assert {k: v.dtype for k, v in old.items()} == {k: v.dtype for k, v in new.items()}
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(".layers." in k and "norm" not in k for k in changed), changed
    m_old = json.loads((ckpt / "grasp_manifest.json").read_text())
    m_new = json.loads((tmp_path / "healed" / "grasp_manifest.json").read_text())
    assert m_new["parameters"] == m_old["parameters"] and m_new["layers"] == m_old["layers"]
    assert m_new["healing"]["teacher"]["fingerprint"] == m_old["source"]["fingerprint"]
    assert len(m_new["healing"]["loss_curve"]) == 30
    assert "Healed after pruning: 30 steps" in (tmp_path / "healed" / "README.md").read_text()
    report = inspect_checkpoint(tmp_path / "healed", verify=True)  # every file's sha256 holds
    assert report["healing"]["steps"] == 30 and "loss_curve" not in report["healing"]
    shown = CliRunner().invoke(main, ["inspect", str(tmp_path / "healed")])
    assert shown.exit_code == 0 and "healed       30 steps" in shown.output, shown.output


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(pruned, tmp_path, monkeypatch):
    _, ckpt, text = pruned
    common = dict(checkpoint=ckpt, data=f"file:{text}", steps=9, save_every=3, **QUICK)
    run_heal(HealConfig(out=tmp_path / "straight", **common), say=lambda _m: None)
    real = heal_job.distill.learning_rate

    def stop_at_seven(step, *args):
        if step == 7:
            raise KeyboardInterrupt
        return real(step, *args)

    monkeypatch.setattr(heal_job.distill, "learning_rate", stop_at_seven)
    with pytest.raises(KeyboardInterrupt):
        run_heal(HealConfig(out=tmp_path / "resumed", **common), say=lambda _m: None)
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.resume").is_dir()
    monkeypatch.setattr(heal_job.distill, "learning_rate", real)
    result = run_heal(HealConfig(out=tmp_path / "resumed", **common), say=lambda _m: None)
    assert not (tmp_path / ".resumed.resume").exists()
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert result.record["steps"] == 9 and len(result.record["loss_curve"]) == 9


def test_a_run_that_makes_the_checkpoint_worse_says_so(pruned, tmp_path):
    """A learning rate far too high (as the default was for a 0.5 B model) raises the held-out
    KL: the command still writes what it trained, and says on stderr to lower --lr."""
    _, ckpt, text = pruned
    r = CliRunner().invoke(main, ["heal", str(ckpt), "--out", str(tmp_path / "h"), "--data",
                                  f"file:{text}", "--steps", "4", "--lr", "1", "-b", "2", "-l",
                                  "32", "--held-out", "4", "--warmup", "1", "--dtype",
                                  "float32", "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: healing raised the held-out KL" in r.stderr, r.stderr
    assert "--lr (this run: 1; try 0.2)" in r.stderr


def test_bad_input_is_one_error_and_nothing_written(pruned, tmp_path):
    dense, ckpt, text = pruned
    other = save_tiny(tmp_path / "other", seed=11)
    before = listing(tmp_path)
    cases = [
        (["--steps", "5", "--teacher", str(other)], "fingerprint"),
        (["--steps", "0"], "--steps"),
        (["--steps", "5", "--lr", "nan"], "--lr"),
        ([], "--steps N or --max-minutes M"),
        (["--steps", "5", "--eval-data", f"file:{text}"], "overlaps --data"),
        (["--steps", "5", "--data", "wikitext2:test"], "evaluation split"),
    ]
    for extra, message in cases:
        args = ["heal", str(ckpt), "--out", str(tmp_path / "out"), "--data", f"file:{text}",
                "-l", "32", "--held-out", "2", "-q", *extra]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and message in r.output, (extra, r.output)
        assert r.output.count("\n") == 1, r.output
    r = CliRunner().invoke(main, ["heal", str(dense), "--out", str(tmp_path / "out"),
                                  "--steps", "5"])
    assert r.exit_code == 2 and "not a pruned grasp-deploy checkpoint" in r.output
    assert listing(tmp_path) == before


def test_a_quantized_checkpoint_is_refused(pruned, tmp_path):
    dense, _, text = pruned
    model = models.load_model(models.resolve_source(str(dense)))
    plan = random_plan(model, str(dense), ratio=0.45, seed=2)
    (tmp_path / "plan").mkdir()
    plan.save(tmp_path / "plan")
    run_export(ExportConfig(plan_dir=tmp_path / "plan", out=tmp_path / "q", quantize="int8"))
    with pytest.raises(GraspError, match="quantized .*int8.* heal the unquantized"):
        run_heal(HealConfig(checkpoint=tmp_path / "q", out=tmp_path / "out",
                            data=f"file:{text}", steps=2, **QUICK))


def test_lora_adapters_train_and_merge_into_the_same_weights_names_and_shapes(pruned, tmp_path):
    _, ckpt, text = pruned
    quick = {**QUICK, "lr": 1e-2}
    result = run_heal(HealConfig(checkpoint=ckpt, out=tmp_path / "lora", data=f"file:{text}",
                                 steps=20, train="lora", lora_rank=4, **quick),
                      say=lambda _m: None)
    kl = result.record["held_out_kl"]
    print(f"LoRA: held-out KL {kl['before']:.4f} -> {kl['after']:.4f}")
    assert kl["after"] < 0.9 * kl["before"], kl
    assert "rank-4 LoRA" in result.record["train"]
    old, new = load_file(str(ckpt / "model.safetensors")), load_file(
        str(tmp_path / "lora" / "model.safetensors"))
    assert {k: v.shape for k, v in old.items()} == {k: v.shape for k, v in new.items()}
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed), changed
    inspect_checkpoint(tmp_path / "lora", verify=True)


def test_data_free_healing_trains_on_the_teachers_own_samples(pruned, tmp_path, monkeypatch):
    """--data self: blocks the teacher samples (transformers here; vLLM in tests/serving), cached
    under the teacher's fingerprint and reused; the held-out KL on unseen samples falls."""
    dense, ckpt, _ = pruned
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    source = models.resolve_source(str(dense))
    teacher, tokenizer = models.load_model(source), models.load_tokenizer(source)
    manifest = json.loads((ckpt / "grasp_manifest.json").read_text())
    spec = heal_data.SampleSpec(str(dense), manifest["source"]["fingerprint"], count=40,
                                seq_len=32, seed=0, engine="transformers")
    ids, record = heal_data.teacher_samples(spec, teacher, tokenizer, progress=False,
                                            say=lambda _m: None)
    assert ids.shape == (40, 32) and record["engine"] == "transformers"
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    assert len({tuple(r) for r in ids.tolist()}) == 40  # drawn, not repeated
    assert spec.path().is_file()
    result = run_heal(HealConfig(checkpoint=ckpt, out=tmp_path / "free", data="self",
                                 samples=40, steps=30, **QUICK), say=lambda _m: None)
    kl, used = result.record["held_out_kl"], result.record["samples"]
    print(f"data-free: held-out KL {kl['before']:.4f} -> {kl['after']:.4f}")
    assert kl["after"] < 0.8 * kl["before"], kl
    assert used["cached"] == str(spec.path()) and used["engine"] == "transformers"
    assert result.record["data"] == "self" and kl["blocks"] == QUICK["held_out"]


def test_samples_join_the_text_and_too_few_are_refused(pruned, tmp_path, monkeypatch):
    dense, ckpt, text = pruned
    monkeypatch.setenv("GRASP_DEPLOY_CACHE", str(tmp_path / "cache"))
    tokenizer = models.load_tokenizer(models.resolve_source(str(dense)))
    ids = heal_data.text_ids(f"file:{text}", None, tokenizer)
    samples = torch.zeros(10, 32, dtype=torch.long)
    held, train = heal_data.split_blocks(ids, samples, 32, 4, 2, 0, "file")
    assert held.shape == (4, 32) and not (held == 0).all(dim=1).any()  # held out from the text
    assert train.shape[0] == ids.numel() // 32 - 4 + 10
    with pytest.raises(GraspError, match="--samples 4 leaves no training block"):
        heal_data.split_blocks(None, samples[:4], 32, 4, 2, 0, "self")
    r = CliRunner().invoke(main, ["heal", str(ckpt), "--out", str(tmp_path / "o"), "--data",
                                  "self", "--samples", "0", "--steps", "2"])
    assert r.exit_code == 2 and "--samples" in r.output and not (tmp_path / "o").exists()
