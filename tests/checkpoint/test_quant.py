"""Quantized checkpoints: int8 weights per channel, in compressed-tensors' own format."""

import pytest
import torch

from grasp_deploy.checkpoint.quant import check_scheme, is_projection, quantize
from grasp_deploy.core.errors import GraspError

pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")


def _tensors(dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    # rows of very different magnitudes: one scale for all would round the small rows to zero
    rows = torch.logspace(-3, 0, 24).unsqueeze(1)
    down = torch.randn(24, 40, generator=gen) * rows
    return {
        "model.layers.0.mlp.down_proj.weight": down.to(dtype),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 24, generator=gen).to(dtype),
        "model.layers.0.self_attn.q_proj.bias": torch.randn(16, generator=gen).to(dtype),
        "model.layers.0.input_layernorm.weight": torch.ones(24, dtype=dtype),
        "model.embed_tokens.weight": torch.randn(50, 24, generator=gen).to(dtype),
        "lm_head.weight": torch.randn(50, 24, generator=gen).to(dtype),
    }


def test_int8_rounds_each_output_channel_to_nearest_with_its_own_scale():
    tensors = _tensors()
    q = quantize(tensors, "int8")
    for name in ("model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"):
        w = tensors[name + ".weight"].float()
        ints, scale = q.tensors[name + ".weight"], q.tensors[name + ".weight_scale"]
        assert ints.dtype == torch.int8 and ints.shape == w.shape
        assert scale.dtype == w.new_empty(0, dtype=torch.bfloat16).dtype
        assert scale.shape == (w.shape[0], 1)
        # the largest entry of each row maps to +-127, and every entry is within half a step
        assert ints.abs().amax(dim=1).min() >= 126
        error = (w - ints.float() * scale.float()).abs()
        assert (error <= scale.float() / 2 * 1.0001 + 1e-12).all()
    # the small rows keep their precision (a per-tensor scale would zero them)
    small = q.tensors["model.layers.0.mlp.down_proj.weight"][0]
    assert small.abs().max() >= 126


def test_only_decoder_projections_are_quantized():
    tensors = _tensors()
    q = quantize(tensors, "int8")
    for name, t in tensors.items():
        if is_projection(name):
            assert q.tensors[name].dtype == torch.int8, name
        else:
            assert q.tensors[name] is t, name
    assert q.record["projections"] == 2
    assert q.record["weight_bytes"] == sum(t.numel() * t.element_size()
                                           for t in q.tensors.values())


def test_the_configuration_is_compressed_tensors_own():
    from compressed_tensors.quantization import QuantizationConfig

    config = quantize(_tensors(), "int8").config
    assert config["quant_method"] == "compressed-tensors"
    assert config["format"] == "int-quantized" and config["ignore"] == ["lm_head"]
    parsed = QuantizationConfig.model_validate(
        {k: v for k, v in config.items() if k not in ("version", "sparsity_config",
                                                      "transform_config")})
    scheme = parsed.config_groups["group_0"]
    assert scheme.weights.num_bits == 8 and scheme.weights.strategy == "channel"
    assert scheme.weights.symmetric and not scheme.weights.dynamic
    assert scheme.input_activations.strategy == "token" and scheme.input_activations.dynamic


def test_an_unknown_scheme_is_refused_with_the_choices():
    with pytest.raises(GraspError, match="int8"):
        check_scheme("int3")


def test_a_checkpoint_without_projections_is_refused():
    with pytest.raises(GraspError, match="nothing to quantize"):
        quantize({"model.norm.weight": torch.ones(4)}, "int8")


def test_w4a16_packs_groups_of_the_largest_size_dividing_every_input():
    from compressed_tensors.compressors import BaseCompressor

    from grasp_deploy.checkpoint.quant import _scheme

    gen = torch.Generator().manual_seed(1)
    tensors = {"model.layers.0.mlp.down_proj.weight": torch.randn(64, 192, generator=gen),
               "model.layers.0.mlp.up_proj.weight": torch.randn(192, 64, generator=gen)}
    q = quantize(tensors, "w4a16")
    assert q.record["group_size"] == 64 and q.record["format"] == "pack-quantized"
    assert q.config["config_groups"]["group_0"]["weights"]["group_size"] == 64
    prefix = "model.layers.0.mlp.down_proj."
    assert q.tensors[prefix + "weight_packed"].shape == (64, 192 // 8)  # 8 per int32
    assert q.tensors[prefix + "weight_scale"].shape == (64, 3)
    assert q.tensors[prefix + "weight_shape"].tolist() == [64, 192]
    packed = {k[len(prefix):]: v for k, v in q.tensors.items() if k.startswith(prefix)}
    restored = BaseCompressor.get_value_from_registry("pack-quantized").decompress(
        packed, _scheme("w4a16", 64))["weight"].float()
    step = q.tensors[prefix + "weight_scale"].float().repeat_interleave(64, dim=1)
    # 4 bits: 15 steps over each group's range (the extreme value clamps to 7 of -8..7)
    error = (restored - tensors[prefix + "weight"]).abs()
    assert (error <= step * 0.5 + 1e-6).float().mean() > 0.99 and (error <= step).all()


def test_w4a16_refuses_widths_the_cpu_kernel_cannot_take():
    tensors = {"model.layers.3.mlp.down_proj.weight": torch.randn(64, 731)}
    with pytest.raises(GraspError, match=r"down_proj.*731.*--align 32"):
        quantize(tensors, "w4a16")
