import torch

from grasp_deploy.core.masking import Multipliers, multiplied
from grasp_deploy.core.shape import ModelShape

from conftest import tiny_model


def _zero_units(model, shape, layer, ffn_ids, kv_ids, ffn_scale=None, kv_scale=None):
    """What slicing does, written on the weights: removed units zeroed, scales folded."""
    h, g = shape.head_dim, shape.group_size
    mlp, attn = model.model.layers[layer].mlp, model.model.layers[layer].self_attn
    with torch.no_grad():
        for j in ffn_ids:
            mlp.gate_proj.weight[j] = 0
            mlp.up_proj.weight[j] = 0
            mlp.down_proj.weight[:, j] = 0
        for k in kv_ids:
            attn.q_proj.weight[k * g * h:(k + 1) * g * h] = 0
            attn.k_proj.weight[k * h:(k + 1) * h] = 0
            attn.v_proj.weight[k * h:(k + 1) * h] = 0
            attn.o_proj.weight[:, k * g * h:(k + 1) * g * h] = 0
        if ffn_scale is not None:
            mlp.down_proj.weight.mul_(ffn_scale)
        if kv_scale is not None:
            per_row = kv_scale.repeat_interleave(h)[:, None]
            attn.k_proj.weight.mul_(per_row)
            attn.v_proj.weight.mul_(per_row)


def _mult(shape, removed, scales=None):
    mult = Multipliers.empty(shape.num_layers)
    for i, layer in enumerate(shape.layers):
        ffn = torch.ones(layer.intermediate_size) if scales is None else scales[i][0].clone()
        kv = torch.ones(layer.num_key_value_heads) if scales is None else scales[i][1].clone()
        ffn[removed[i][0]] = 0
        kv[removed[i][1]] = 0
        mult.ffn[i], mult.kv[i] = ffn, kv
    return mult


def test_masking_a_unit_equals_removing_it():
    for kv_heads in (2, 4):  # GQA and MHA
        model = tiny_model(num_key_value_heads=kv_heads)
        shape = ModelShape.from_config(model.config)
        removed = {0: ([1, 5, 50], [0]), 1: ([], [1]), 2: (list(range(0, 96, 2)), [])}
        ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), multiplied(model, shape, _mult(shape, removed)):
            masked = model(ids).logits
        dense = model(ids).logits
        zeroed = tiny_model(num_key_value_heads=kv_heads)
        for i, (f, k) in removed.items():
            _zero_units(zeroed, shape, i, f, k)
        with torch.no_grad():
            reference = zeroed(ids).logits
        torch.testing.assert_close(masked, reference, atol=1e-5, rtol=1e-5)
        assert (masked - dense).abs().max() > 1e-3  # the mask really did something


def test_scales_equal_folding_them_into_weights():
    model = tiny_model()
    shape = ModelShape.from_config(model.config)
    gen = torch.Generator().manual_seed(1)
    scales = {i: (1 + 0.4 * torch.rand(96, generator=gen), 1 + 0.4 * torch.rand(2, generator=gen))
              for i in range(3)}
    removed = {0: ([3], [1]), 1: ([7, 8], []), 2: ([], [0])}
    ids = torch.randint(0, 320, (1, 20), generator=gen)
    with torch.no_grad(), multiplied(model, shape, _mult(shape, removed, scales)):
        masked = model(ids).logits
    folded = tiny_model()
    for i, (f, k) in removed.items():
        _zero_units(folded, shape, i, f, k, ffn_scale=scales[i][0], kv_scale=scales[i][1])
    with torch.no_grad():
        torch.testing.assert_close(masked, folded(ids).logits, atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_on_exit():
    model = tiny_model()
    shape = ModelShape.from_config(model.config)
    ids = torch.randint(0, 320, (1, 8))
    with torch.no_grad():
        before = model(ids).logits
        with multiplied(model, shape, _mult(shape, {i: ([0, 1, 2], [0]) for i in range(3)})):
            pass
        torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)
