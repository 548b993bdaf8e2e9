"""Export: the checkpoint format, pinned on tiny random models (GQA/MHA, tied/untied, biases)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.masking import multiplied
from grasp_deploy.core.slicing import materialize
from grasp_deploy.jobs.export import ExportConfig, run_export
from grasp_deploy.sources import models

from conftest import LLAMA3_ROPE, NO_GRASP, listing, random_plan, save_tiny

VARIANTS = {
    "gqa-untied": dict(),
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "gqa-bias": dict(attention_bias=True, mlp_bias=True),
    # Llama 3.x: llama3 rope scaling, explicit head_dim (not hidden / heads), tied (1B/3B)
    "llama3-tied": dict(rope_parameters=LLAMA3_ROPE, head_dim=32, tie_word_embeddings=True),
    # Qwen2/2.5: q/k/v biases (no o_proj bias), tied embeddings
    "qwen2-tied": dict(family="qwen2", tie_word_embeddings=True),
    # Qwen3: per-head q_norm/k_norm, explicit head_dim 24 (hidden 64 / 4 heads would be 16)
    "qwen3": dict(family="qwen3", head_dim=24),
    # Mistral v0.1: a sliding window shorter than the test sequences, so ignoring it shows
    "mistral-window": dict(family="mistral", sliding_window=8),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    """(source dir, plan dir, checkpoint dir, plan) for one model variant."""
    root = tmp_path_factory.mktemp(request.param)
    src = save_tiny(root / "model", seed=3, **VARIANTS[request.param])
    model = models.load_model(models.resolve_source(str(src)))
    plan = random_plan(model, str(src))
    plan_dir = root / "plan"
    plan_dir.mkdir()
    plan.save(plan_dir)
    ckpt = root / "ckpt"
    run_export(ExportConfig(plan_dir=plan_dir, out=ckpt))
    return src, plan_dir, ckpt, plan


def _architecture(src) -> str:
    """What the source family exports to: Grasp<Family>ForCausalLM."""
    family = json.loads((src / "config.json").read_text())["model_type"]
    return {"llama": "GraspLlamaForCausalLM", "mistral": "GraspMistralForCausalLM",
            "qwen2": "GraspQwen2ForCausalLM", "qwen3": "GraspQwen3ForCausalLM"}[family]


def _ids(n=2, t=24, seed=0):
    return torch.randint(0, 320, (n, t), generator=torch.Generator().manual_seed(seed))


def test_exported_model_equals_the_masked_model(exported):
    src, _, ckpt, plan = exported
    dense = models.load_model(models.resolve_source(str(src)))
    with torch.no_grad(), multiplied(dense, plan.source.shape, plan.multipliers()):
        masked = dense(_ids()).logits
    pruned = models.load_model(models.resolve_source(str(ckpt)))
    assert type(pruned).__name__ == _architecture(src)
    with torch.no_grad():
        torch.testing.assert_close(pruned(_ids()).logits, masked, atol=1e-4, rtol=1e-4)


def test_counts_and_shapes_follow_the_plan(exported):
    src, _, ckpt, plan = exported
    from safetensors import safe_open

    manifest = json.loads((ckpt / "grasp_manifest.json").read_text())
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == manifest["parameters"]["pruned"]
    assert manifest["parameters"]["pruned"] == plan.budget.model_pruned
    widths = [len(lp.ffn_keep) for lp in plan.layers]
    assert manifest["alignment"] == {"ffn_multiple": 1, "rule": "given", "kv_multiple": 1,
                                     "ffn_widths_gcd": int(np.gcd.reduce(widths))}
    h, g, d = (
        plan.source.shape.head_dim,
        plan.source.shape.group_size,
        plan.source.shape.hidden_size,
    )
    for i, lp in enumerate(plan.layers):
        assert shapes[f"model.layers.{i}.mlp.gate_proj.weight"] == (len(lp.ffn_keep), d)
        assert shapes[f"model.layers.{i}.mlp.down_proj.weight"] == (d, len(lp.ffn_keep))
        assert shapes[f"model.layers.{i}.self_attn.k_proj.weight"] == (len(lp.kv_keep) * h, d)
        assert shapes[f"model.layers.{i}.self_attn.o_proj.weight"] == (d, len(lp.kv_keep) * g * h)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == [_architecture(src)]
    assert config["per_layer_config"]["0"] == plan.widths()[0]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    assert ("lm_head.weight" in shapes) != config["tie_word_embeddings"]
    config_class = _architecture(src).replace("ForCausalLM", "Config")
    assert config["auto_map"] == {"AutoConfig": f"configuration_grasp.{config_class}",
                                  "AutoModelForCausalLM": f"modeling_grasp.{_architecture(src)}"}
    for name in ("configuration_grasp.py", "modeling_grasp.py", "tokenizer.json",
                 "generation_config.json", "README.md"):
        assert (ckpt / name).is_file(), name
    assert not list(ckpt.glob("*_grasp_*.py"))  # one pair for every family


def test_replaying_a_plan_gives_identical_tensors(exported):
    src, _, _, plan = exported
    a = materialize(models.load_model(models.resolve_source(str(src))), plan, torch.float32)
    b = materialize(models.load_model(models.resolve_source(str(src))), plan, torch.float32)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


ROUND_TRIP = NO_GRASP + textwrap.dedent("""
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    ckpt, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
    model = AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(ids).logits
        cached = model.generate(ids[:1], max_new_tokens=12, do_sample=False, use_cache=True)
        plain = model.generate(ids[:1], max_new_tokens=12, do_sample=False, use_cache=False)
    print(json.dumps({"cls": type(model).__name__, "logits": logits.tolist(),
                      "cached": cached.tolist(), "plain": plain.tolist()}))
""")


def test_stock_transformers_loads_it_without_grasp_deploy(exported, tmp_path):
    src, _, ckpt, plan = exported
    ids = _ids(2, 10, seed=3)
    proc = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(ckpt), json.dumps(ids.tolist())],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cls"] == _architecture(src)
    dense = models.load_model(models.resolve_source(str(src)))
    with torch.no_grad(), multiplied(dense, plan.source.shape, plan.multipliers()):
        masked = dense(ids).logits
    torch.testing.assert_close(torch.tensor(out["logits"]), masked, atol=1e-4, rtol=1e-4)
    assert out["cached"] == out["plain"] and len(out["cached"][0]) == 22


def _python_block_after(text: str, marker: str) -> str:
    """The first ```python block after `marker` in a markdown text."""
    rest = text[text.index(marker):]
    start = rest.index("```python\n") + len("```python\n")
    return rest[start:rest.index("```", start)]


@pytest.mark.parametrize("doc", ["docs/checkpoint-format.md", "model card"])
def test_documented_loading_snippet_runs_as_written_without_a_prompt(tiny_dir, tmp_path, doc):
    """The snippet users copy (the docs, and the checkpoint's own card) must not stop at
    transformers' "Do you wish to run the custom code?" prompt: run it with stdin closed."""
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    plan = random_plan(model, str(tiny_dir), seed=2)
    plan.save(tmp_path)
    ckpt = tmp_path / "ckpt"
    run_export(ExportConfig(plan_dir=tmp_path, out=ckpt))
    if doc != "model card":
        page = (Path(__file__).resolve().parents[2] / doc).read_text()
        snippet = _python_block_after(page, "Load it from plain transformers").replace(
            "ckpt/r30", str(ckpt)
        )
    else:
        snippet = _python_block_after(
            (ckpt / "README.md").read_text(), "Load with plain transformers"
        )
        snippet = snippet.replace('"PATH"', repr(str(ckpt)))
    assert "from_pretrained" in snippet
    check = "\nprint('tokens', tokenizer('hello world')['input_ids'], type(model).__name__)\n"
    proc = subprocess.run([sys.executable, "-c", NO_GRASP + snippet + check], capture_output=True,
                          text=True, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr
    assert "tokens [" in proc.stdout and "GraspLlamaForCausalLM" in proc.stdout


def test_sharded_export_loads(tiny_dir, tmp_path):
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    plan = random_plan(model, str(tiny_dir), seed=1)
    plan.save(tmp_path)
    ckpt = tmp_path / "ckpt"
    run_export(ExportConfig(plan_dir=tmp_path, out=ckpt, max_shard_size="40KB"))
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) > 1 and (ckpt / "model.safetensors.index.json").is_file()
    manifest = json.loads((ckpt / "grasp_manifest.json").read_text())
    assert sorted(manifest["weights"]) == shards
    pruned = models.load_model(models.resolve_source(str(ckpt)))
    with torch.no_grad(), multiplied(model, plan.source.shape, plan.multipliers()):
        masked = model(_ids()).logits
    with torch.no_grad():
        torch.testing.assert_close(pruned(_ids()).logits, masked, atol=1e-4, rtol=1e-4)
    r = CliRunner().invoke(main, ["inspect", str(ckpt), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["weight_files"] == len(shards) and report["verified_sha256"]


def test_onnx_export_matches_pytorch(tiny_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX extras not installed")
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    random_plan(model, str(tiny_dir), seed=2).save(tmp_path)
    r = CliRunner().invoke(main, ["export", str(tiny_dir), str(tmp_path), "--out",
                                  str(tmp_path / "ck"), "--format", "onnx"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "ck" / "grasp_manifest.json").read_text())
    assert (tmp_path / "ck" / "onnx" / "model.onnx").is_file()
    assert manifest["onnx"]["max_abs_logits_diff"] < 1e-3
    assert "max |logits diff|" in r.output


def test_inspect_reports_counts_and_kv_bytes(exported):
    _, _, ckpt, plan = exported
    r = CliRunner().invoke(main, ["inspect", str(ckpt), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["parameters"] == plan.budget.model_pruned
    assert rep["dense_parameters"] == plan.budget.model_dense
    kv = [len(layer.kv_keep) for layer in plan.layers]
    per_head = 2 * plan.source.shape.head_dim * rep["kv_dtype_bytes"]
    assert rep["kv_cache_bytes_per_token"] == sum(kv) * per_head
    assert rep["dense_kv_cache_bytes_per_token"] == sum(
        layer.num_key_value_heads for layer in plan.source.shape.layers) * per_head
    text = CliRunner().invoke(main, ["inspect", str(ckpt)]).output
    assert "KV bytes/tok" in text and "sha256 of every file" in text


# -- bad input --------------------------------------------------------------------------------
def _copy(ckpt, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(ckpt, dst)
    return dst


def _run(*args):
    """The CLI in this process: (exit code, its error lines); any other exception fails."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result.exit_code, lines


def test_plan_for_another_model_is_refused(exported, tmp_path):
    _, plan_dir, _, _ = exported
    other = save_tiny(tmp_path / "other", seed=11)
    code, lines = _run("export", other, plan_dir, "--out", tmp_path / "ck")
    assert code == 2 and len(lines) == 1 and "plan was made for" in lines[0]
    assert not (tmp_path / "ck").exists()


def test_corrupted_and_truncated_weights(exported, tmp_path):
    _, _, ckpt, _ = exported
    bad = _copy(ckpt, tmp_path)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    code, lines = _run("inspect", bad)
    assert code == 2 and len(lines) == 1 and "was modified or corrupted" in lines[0]
    (bad / "model.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    code, lines = _run("eval", bad, "--data", f"file:{bad / 'tokenizer.json'}", "--seq-len", "32")
    assert code == 2 and len(lines) == 1 and "was modified or corrupted" in lines[0], lines
    # Without the hash check (--no-verify) the truncation itself is still caught.
    code, lines = _run("eval", bad, "--data", f"file:{bad / 'tokenizer.json'}", "--seq-len", "32",
                       "--no-verify")
    assert code == 2 and len(lines) == 1 and "truncated" in lines[0], lines


def test_config_that_disagrees_with_the_weights(exported, tmp_path):
    _, _, ckpt, _ = exported
    bad = _copy(ckpt, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["per_layer_config"]["1"]["intermediate_size"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    for cmd in (
        ["inspect", bad],
        ["eval", bad, "--data", f"file:{bad / 'tokenizer.json'}", "--seq-len", "32"],
    ):
        code, lines = _run(*cmd)
        assert code == 2 and len(lines) == 1 and "config.json was modified" in lines[0], lines
        # With --no-verify the shapes are still checked against the config.
        code, lines = _run(*cmd, "--no-verify")
        assert (
            code == 2 and len(lines) == 1 and "config and the weights disagree" in lines[0]
        ), lines


def test_existing_output_and_failed_writes_leave_nothing(exported, tmp_path, monkeypatch):
    _, plan_dir, _, _ = exported
    out = tmp_path / "ck"
    out.mkdir()
    code, lines = _run("export", plan_dir, "--out", out)
    assert code == 2 and "pass --force" in lines[0]
    before = listing(tmp_path)

    def disk_full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("grasp_deploy.checkpoint.write.write_weights", disk_full)
    with pytest.raises(GraspError, match="No space left on device; nothing was changed"):
        run_export(ExportConfig(plan_dir=plan_dir, out=tmp_path / "new"))
    assert listing(tmp_path) == before


def _large_vocab_tokenizer(directory: Path) -> None:
    """A tokenizer of over 100,000 entries with a pre-tokenizer (Qwen2.5's has 151,643): the
    kind transformers checks for the Mistral regex."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(100_100)}
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(directory)


def test_loading_the_tokenizer_does_not_warn_of_a_wrong_regex(tiny_dir, tmp_path):
    """transformers warned "incorrect regex pattern ... fix_mistral_regex" on every load of a
    large tokenizer from our checkpoints (config.json had no transformers_version, which it
    reads as an old Mistral checkpoint). The warning itself still works: without the field it
    comes back."""
    model = models.load_model(models.resolve_source(str(tiny_dir)))
    plan_dir = tmp_path / "plan"
    plan_dir.mkdir()
    random_plan(model, str(tiny_dir)).save(plan_dir)
    ckpt = tmp_path / "ckpt"
    run_export(ExportConfig(plan_dir=plan_dir, out=ckpt))
    import transformers

    config = json.loads((ckpt / "config.json").read_text())
    assert config["transformers_version"] == transformers.__version__

    def warnings(directory: Path) -> str:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).unlink(missing_ok=True)
        _large_vocab_tokenizer(directory)
        code = ("from transformers import AutoTokenizer\n"
                f"AutoTokenizer.from_pretrained({str(directory)!r}, trust_remote_code=True)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    import shutil

    old = Path(shutil.copytree(ckpt, tmp_path / "old"))
    config.pop("transformers_version")
    (old / "config.json").write_text(json.dumps(config))
    assert "incorrect regex pattern" in warnings(old)
    assert "incorrect regex pattern" not in warnings(ckpt)
