"""`export --quantize int8`: a compressed-tensors checkpoint that transformers decompresses to
exactly the weights it stores, verified like any other checkpoint."""

import importlib.util
import json

import pytest
import torch
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.sources import models

from conftest import listing, random_plan, save_tiny

pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    src = save_tiny(root / "model", seed=4, family="qwen2", tie_word_embeddings=True)
    plan = random_plan(models.load_model(models.resolve_source(str(src))), str(src))
    (root / "plan").mkdir()
    plan.save(root / "plan")
    r = CliRunner().invoke(main, ["export", str(root / "plan"), "--out", str(root / "ckpt"),
                                  "--quantize", "int8"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(main, ["export", str(root / "plan"), "--out", str(root / "plain")])
    assert r2.exit_code == 0, r2.output
    return root / "ckpt", root / "plain", r.output


def test_the_checkpoint_records_the_scheme_everywhere(quantized):
    ckpt, _, output = quantized
    config = json.loads((ckpt / "config.json").read_text())
    manifest = json.loads((ckpt / "grasp_manifest.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert manifest["quantization"]["scheme"] == "int8"
    assert manifest["quantization"]["preset"] == "W8A8"
    assert "quantized    int8 (W8A8, int-quantized)" in output
    assert "`int8` (compressed-tensors preset W8A8" in (ckpt / "README.md").read_text()
    r = CliRunner().invoke(main, ["inspect", str(ckpt), "--json"])  # every file verified
    assert r.exit_code == 0, r.output


def test_transformers_decompresses_to_exactly_the_stored_weights(quantized):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt, plain, _ = quantized
    stored = load_file(str(ckpt / "model.safetensors"))
    model = models.load_model(models.resolve_source(str(ckpt)))  # what eval and compare load
    weights = dict(model.named_parameters())
    projections = [k[: -len(".weight_scale")] for k in stored if k.endswith(".weight_scale")]
    assert len(projections) == 7 * model.config.num_hidden_layers
    for name in projections:
        want = stored[name + ".weight"].float() * stored[name + ".weight_scale"].float()
        torch.testing.assert_close(weights[name + ".weight"].float(), want, atol=0, rtol=0)
    # int8 per channel stays close to the unquantized export of the same plan
    reference = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = torch.log_softmax(model(ids).logits, -1)
        b = torch.log_softmax(reference(ids).logits, -1)
    # per-channel int8 moves each weight by at most half a step (1/254 of its row's range):
    # the next-token log-probabilities move little (measured: mean 0.01, max 0.06)
    assert (a - b).abs().mean() < 0.02 and (a - b).abs().max() < 0.15
    # plain transformers (no grasp-deploy) decompresses on its first forward: the same logits
    stock = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.log_softmax(stock(ids).logits, -1), a)


def test_quantize_with_onnx_is_refused_before_anything_is_written(quantized, tmp_path):
    ckpt, _, _ = quantized
    plan = ckpt.parent / "plan"
    r = CliRunner().invoke(main, ["export", str(plan), "--out", str(tmp_path / "x"),
                                  "--quantize", "int8", "--format", "onnx"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--quantize" in r.output, r.output
    r = CliRunner().invoke(main, ["export", str(plan), "--out", str(tmp_path / "y"),
                                  "--quantize", "int3"])
    assert r.exit_code == 2 and "'int3'" in r.output and "int8" in r.output, r.output
    assert listing(tmp_path) == []


def test_a_dense_model_quantizes_through_the_same_path(quantized, tmp_path):
    from safetensors.torch import load_file

    src = quantized[0].parent / "model"
    out = tmp_path / "dense-int8"
    r = CliRunner().invoke(main, ["export", str(src), "--dense", "--quantize", "int8",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]  # the source's own: vLLM's model
    assert config["quantization_config"]["format"] == "int-quantized"
    stored = load_file(str(out / "model.safetensors"))
    model = models.load_model(models.resolve_source(str(out)))
    weights = dict(model.named_parameters())
    name = "model.layers.1.mlp.gate_proj"
    want = stored[name + ".weight"].float() * stored[name + ".weight_scale"].float()
    torch.testing.assert_close(weights[name + ".weight"].float(), want, atol=0, rtol=0)
    r = CliRunner().invoke(main, ["inspect", str(out)])
    assert r.exit_code == 0 and "quantized    int8 (W8A8" in r.output, r.output
    assert "sha256 of every file" in r.output
    r = CliRunner().invoke(main, ["export", str(src), "--dense", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--quantize" in r.output, r.output
    assert not (tmp_path / "z").exists()


def test_w4a16_exports_an_aligned_plan_that_transformers_decompresses(tmp_path):
    from conftest import SERVING_SHAPE

    src = save_tiny(tmp_path / "model", seed=6, **SERVING_SHAPE)
    model = models.load_model(models.resolve_source(str(src)))
    for align, code in ((32, 0), (1, 2)):
        plan = random_plan(model, str(src), ratio=0.4, seed=2, align=align)
        plan_dir = tmp_path / f"plan{align}"
        plan_dir.mkdir()
        plan.save(plan_dir)
        out = tmp_path / f"ckpt{align}"
        r = CliRunner().invoke(main, ["export", str(plan_dir), "--out", str(out),
                                      "--quantize", "w4a16"])
        assert r.exit_code == code, r.output
    assert "--align 32" in r.output and not (tmp_path / "ckpt1").exists()  # the unaligned one
    ckpt = tmp_path / "ckpt32"
    manifest = json.loads((ckpt / "grasp_manifest.json").read_text())
    assert manifest["quantization"]["group_size"] == 32  # hidden 128, widths multiples of 32
    r = CliRunner().invoke(main, ["inspect", str(ckpt), "--json"])  # counts the packed weights
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parameters"] == manifest["parameters"]["pruned"]
    if importlib.util.find_spec("vllm"):  # refused before any server starts
        from grasp_deploy.server.net import free_port

        r = CliRunner().invoke(main, ["serve", str(ckpt), "--dtype", "float32",
                                      "--port", str(free_port())])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "--dtype bfloat16" in r.output and "w4a16" in r.output, r.output
    from compressed_tensors.compressors import BaseCompressor
    from safetensors.torch import load_file

    from grasp_deploy.checkpoint.quant import _scheme

    loaded = models.load_model(models.resolve_source(str(ckpt)))
    weights = dict(loaded.named_parameters())
    stored = load_file(str(ckpt / "model.safetensors"))
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    for i in range(SERVING_SHAPE["num_hidden_layers"]):
        prefix = f"model.layers.{i}.mlp.down_proj."
        packed = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        want = compressor.decompress(packed, _scheme("w4a16", 32))["weight"].float()
        assert weights[prefix + "weight"].shape == (128, len(plan_widths(manifest, i)))
        torch.testing.assert_close(weights[prefix + "weight"].float(), want, atol=0, rtol=0)


def plan_widths(manifest, i):
    return range(manifest["layers"][i]["intermediate_size"])


def test_a_checkpoint_quantizes_as_it_stands_like_its_plan(quantized, tmp_path):
    """``export CKPT --quantize`` (for a healed checkpoint, say) writes the tensors that
    quantizing the plan's export writes, with every other file and the manifest carried."""
    from safetensors.torch import load_file

    from grasp_deploy.checkpoint.read import inspect_checkpoint

    from_plan, plain, _ = quantized
    r = CliRunner().invoke(main, ["export", str(plain), "--quantize", "int8", "--out",
                                  str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    a = load_file(str(from_plan / "model.safetensors"))
    b = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m_plain = json.loads((plain / "grasp_manifest.json").read_text())
    m_q = json.loads((tmp_path / "q" / "grasp_manifest.json").read_text())
    assert m_q["quantization"]["scheme"] == "int8" and m_q["layers"] == m_plain["layers"]
    tokenizer = (tmp_path / "q" / "tokenizer.json").read_bytes()
    assert tokenizer == (plain / "tokenizer.json").read_bytes()
    assert inspect_checkpoint(tmp_path / "q", verify=True)["quantization"]["scheme"] == "int8"
    before = listing(tmp_path)
    for source, extra, message in ((plain, [], "add --quantize"),
                                   (from_plan, ["--quantize", "int8"], "not an unquantized")):
        r = CliRunner().invoke(main, ["export", str(source), *extra, "--out", str(tmp_path / "x")])
        assert r.exit_code == 2 and message in r.output, r.output
    assert listing(tmp_path) == before
