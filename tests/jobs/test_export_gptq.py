"""`export --quantize w4a16 --calib TEXT`: 4-bit weights chosen by GPTQ on calibration text,
in the same compressed-tensors format as rounding to nearest (so vLLM and transformers load it
as they load that), and closer to the unquantized model than rounding to nearest."""

import json

import pytest
import torch
from click.testing import CliRunner

from grasp_deploy.cli import main
from grasp_deploy.sources import models, text

from conftest import SERVING_SHAPE, listing, make_text, save_tiny

pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    src = save_tiny(root / "model", seed=6, **SERVING_SHAPE)
    (root / "calib.txt").write_text(make_text(6000, seed=3))
    calib = ["--calib", f"file:{root / 'calib.txt'}", "-n", "16", "-l", "64", "-q"]
    for name, extra in (("nearest", []), ("gptq", calib)):
        r = CliRunner().invoke(main, ["export", str(src), "--dense", "--quantize", "w4a16",
                                      "--out", str(root / name), *extra])
        assert r.exit_code == 0, r.output
    return root


def _logprobs(directory, ids):
    model = models.load_model(models.resolve_source(str(directory)))  # what eval loads
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), -1)


def test_gptq_output_is_closer_to_the_unquantized_model_than_nearest(exports):
    tokenizer = models.load_tokenizer(models.resolve_source(str(exports / "model")))
    held_out = text.tokenize(tokenizer, make_text(800, seed=11))[:256].reshape(4, 64)
    dense = _logprobs(exports / "model", held_out)
    gaps = {name: float((_logprobs(exports / name, held_out) - dense).abs().mean())
            for name in ("nearest", "gptq")}
    # measured: mean |log-prob gap| 0.17 against 0.26 for rounding to nearest
    assert gaps["gptq"] < 0.8 * gaps["nearest"], gaps


def test_the_manifest_says_how_the_weights_were_rounded_and_on_what(exports):
    nearest = json.loads((exports / "nearest" / "grasp_manifest.json").read_text())
    gptq = json.loads((exports / "gptq" / "grasp_manifest.json").read_text())
    assert nearest["quantization"]["rounding"] == "nearest"
    assert "calibration" not in nearest["quantization"]
    record = gptq["quantization"]
    assert record["rounding"] == "gptq" and record["group_size"] == 64  # divides 128 and 192
    assert record["calibration"]["num_samples"] == 16 and record["calibration"]["seq_len"] == 64
    assert len(record["calibration"]["sha256"]) == 64
    # the model's own fingerprint, taken before GPTQ rounded its weights in place
    assert gptq["source"]["fingerprint"] == nearest["source"]["fingerprint"]
    config = json.loads((exports / "gptq" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    r = CliRunner().invoke(main, ["inspect", str(exports / "gptq")])
    assert r.exit_code == 0 and "pack-quantized, GPTQ on file:" in r.output, r.output


def test_the_stored_integers_are_what_transformers_loads(exports):
    from safetensors.torch import load_file

    stored = load_file(str(exports / "gptq" / "model.safetensors"))
    weights = dict(models.load_model(models.resolve_source(str(exports / "gptq")))
                   .named_parameters())
    from compressed_tensors.compressors import BaseCompressor

    from grasp_deploy.checkpoint.quant import _scheme

    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    for i in range(SERVING_SHAPE["num_hidden_layers"]):
        prefix = f"model.layers.{i}.self_attn.k_proj."
        packed = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
        want = compressor.decompress(packed, _scheme("w4a16", 64))["weight"].float()
        torch.testing.assert_close(weights[prefix + "weight"].float(), want, atol=0, rtol=0)


@pytest.mark.parametrize("extra, message", [
    (["--quantize", "int8"], "rounds to nearest"),
    (["--quantize", "w4a16", "-n", "0"], "--num-samples 0"),
    (["--quantize", "w4a16", "--calib-missing"], None),
])
def test_bad_gptq_settings_are_refused_before_anything_is_written(exports, tmp_path, extra,
                                                                   message):
    if message is None:  # a calibration file that is not there
        extra = ["--quantize", "w4a16"]
        calib = f"file:{tmp_path / 'absent.txt'}"
    else:
        calib = f"file:{exports / 'calib.txt'}"
    before = listing(tmp_path)
    r = CliRunner().invoke(main, ["export", str(exports / "model"), "--dense", *extra,
                                  "--calib", calib, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert (message or "absent.txt") in r.output, r.output
    assert listing(tmp_path) == before


def test_a_pruned_checkpoint_rounds_by_gptq_and_a_plan_is_told_to_export_first(tmp_path,
                                                                                exports):
    from conftest import random_plan

    model = models.load_model(models.resolve_source(str(exports / "model")))
    random_plan(model, str(exports / "model"), ratio=0.4, seed=2, align=32).save(tmp_path)
    calib = ["--calib", f"file:{exports / 'calib.txt'}", "-n", "8", "-l", "64", "-q"]
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "c"),
                                  "--quantize", "w4a16", *calib])
    assert r.exit_code == 2 and "export the plan first" in r.output, r.output
    assert not (tmp_path / "c").exists()
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(tmp_path / "plain"), "--out",
                                  str(tmp_path / "c"), "--quantize", "w4a16", *calib])
    assert r.exit_code == 0 and "GPTQ on file:" in r.output, r.output
    card = (tmp_path / "c" / "README.md").read_text()
    assert "chosen by GPTQ on 8 blocks of 64 tokens" in card
    loaded = models.load_model(models.resolve_source(str(tmp_path / "c")))  # decompresses
    plain = models.load_model(models.resolve_source(str(tmp_path / "plain")))
    weights = dict(loaded.named_parameters())  # beside the scales compressed-tensors adds
    assert all(weights[k].shape == v.shape for k, v in plain.named_parameters())


def test_prune_and_serve_rounds_w4a16_by_gptq_on_the_prune_text_unless_data_free(tmp_path,
                                                                                  exports):
    from grasp_deploy.jobs.pipeline import PipelineConfig, derive
    from grasp_deploy.jobs.prune import PruneConfig
    from grasp_deploy.server.launcher import ServerConfig

    from conftest import random_plan

    model = models.load_model(models.resolve_source(str(exports / "model")))
    (tmp_path / "p").mkdir()
    random_plan(model, str(exports / "model"), ratio=0.4, seed=3, align=32).save(tmp_path / "p")
    ckpt = tmp_path / "work" / "ckpt"
    assert CliRunner().invoke(main, ["export", str(tmp_path / "p"), "--out", str(ckpt)]
                              ).exit_code == 0

    def served(calib, said):
        prune = PruneConfig(0.4, tmp_path / "p", calib=calib, num_samples=8, seq_len=300,
                            progress=False)
        out = derive(PipelineConfig(prune=prune, server=ServerConfig(model="-"),
                                    quantize="w4a16"), ckpt, False, said.append)
        return json.loads((out / "grasp_manifest.json").read_text())["quantization"]

    said: list[str] = []
    record = served(f"file:{exports / 'calib.txt'}", said)
    assert record["rounding"] == "gptq" and record["calibration"]["num_samples"] == 8
    assert record["calibration"]["seq_len"] == 256  # capped at export's default
    assert said == ["w4a16: rounding by GPTQ on 8 blocks of 256 tokens of file:"
                    f"{exports / 'calib.txt'} (the --calib text)"]
    again: list[str] = []
    assert served(f"file:{exports / 'calib.txt'}", again) == record
    assert again and again[0].startswith("reusing the quantized checkpoint")
    data_free: list[str] = []
    assert served("self", data_free)["rounding"] == "nearest" and data_free == []


def test_prune_and_serve_prunes_for_the_scheme_it_serves(tmp_path):
    from grasp_deploy.core.errors import GraspError
    from grasp_deploy.jobs.pipeline import PipelineConfig, prune_inputs
    from grasp_deploy.jobs.prune import PruneConfig
    from grasp_deploy.server.launcher import ServerConfig

    def config(quantize, align="auto"):
        return PipelineConfig(prune=PruneConfig(0.3, tmp_path, align=align),
                              server=ServerConfig(model="-"), quantize=quantize)

    plain, int8, w4 = (config(q) for q in (None, "int8", "w4a16"))
    assert w4.prune.quantize == "w4a16" and w4.prune.width_multiple == 32
    # the plan (and the work directory named after its inputs) changes only where widths do
    assert prune_inputs(plain.prune) == prune_inputs(int8.prune) != prune_inputs(w4.prune)
    with pytest.raises(GraspError, match="--align 48 leaves FFN widths that w4a16's kernel"):
        config("w4a16", align=48)
    assert config("w4a16", align=64).prune.align == 64
