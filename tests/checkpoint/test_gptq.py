"""GPTQ rounding: 4-bit weights on the w4a16 grid, chosen against the layer's inputs."""

import pytest
import torch

from grasp_deploy.checkpoint.gptq import gptq, prepare
from grasp_deploy.checkpoint.quant import weight_args, weight_scale

pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed")


def _correlated(rows=48, cols=128, n=3000, seed=0):
    """A weight and inputs that live near a 24-dimensional subspace, as a layer's do."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=gen) @ torch.randn(24, cols, generator=gen)
    x += 0.05 * torch.randn(n, cols, generator=gen)
    return torch.randn(rows, cols, generator=gen), x


def _nearest(w, args):
    scale = weight_scale(w, args).to(torch.bfloat16).float()  # (rows, groups)
    g = args.group_size
    grid = w.reshape(w.shape[0], -1, g) / scale.unsqueeze(-1)
    return (grid.round().clamp(-8, 7) * scale.unsqueeze(-1)).reshape(w.shape)


def test_every_weight_lands_on_the_4_bit_grid_of_its_group_scale():
    args = weight_args("w4a16", 32)
    w, x = _correlated()
    q, scale = gptq(w, prepare(x.T @ x), args)
    assert scale.shape == (48, 4) and scale.dtype == torch.bfloat16
    ints = q.reshape(48, 4, 32) / scale.float().unsqueeze(-1)
    assert torch.equal(ints, ints.round()) and ints.min() >= -8 and ints.max() <= 7


def test_the_layer_output_error_is_far_below_rounding_to_nearest():
    args = weight_args("w4a16", 32)
    w, x = _correlated()
    q, _ = gptq(w, prepare(x.T @ x), args)

    def error(approx):
        return float(((x @ (w - approx).T) ** 2).sum())

    # measured: 7x lower on these inputs; GPTQ trades each weight's own error for the output's
    assert error(q) < error(_nearest(w, args)) / 3
    assert (w - q).abs().mean() > (w - _nearest(w, args)).abs().mean()


def test_inputs_that_never_fire_get_zero_weights_and_the_rest_still_rounds():
    args = weight_args("w4a16", 32)
    w, x = _correlated(cols=64)
    x[:, 5] = 0.0
    q, _ = gptq(w, prepare(x.T @ x), args)
    assert torch.isfinite(q).all() and (q[:, 5] == 0).all() and q[:, 6].abs().sum() > 0


def test_a_gram_matrix_of_the_wrong_size_is_refused():
    args = weight_args("w4a16", 32)
    w, x = _correlated(cols=64)
    with pytest.raises(ValueError, match="do not fit"):
        gptq(w, prepare(x[:, :32].T @ x[:, :32]), args)
