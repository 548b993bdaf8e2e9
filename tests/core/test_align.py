"""``--align auto``: the multiple it picks per model width and device, and what it refuses."""

import pytest

from grasp_deploy.core.align import (
    AUTO,
    BY_DEVICE,
    MIN_BLOCKS,
    auto_align,
    parse_align,
    resolve_align,
)
from grasp_deploy.core.errors import GraspError
from grasp_deploy.core.shape import ModelShape

from conftest import tiny_config


def _shape(ffn: int) -> ModelShape:
    return ModelShape.from_config(tiny_config(intermediate_size=ffn))


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("ffn", [96, 192, 1536, 8192, 11008, 14336])
def test_auto_is_the_device_multiple_when_the_model_is_wide_enough(device, ffn):
    # cuda: the Tensor Core multiple; cpu: layers share oneDNN kernels (core/align.py)
    align, want = auto_align(_shape(ffn), device), BY_DEVICE[device]
    assert want == 64
    assert align & (align - 1) == 0 and 1 <= align <= want  # a power of two, at most 64
    if ffn >= MIN_BLOCKS * want:
        assert align == want
    else:  # the largest power of two that leaves MIN_BLOCKS blocks
        assert ffn // align >= MIN_BLOCKS and ffn < MIN_BLOCKS * 2 * align


@pytest.mark.parametrize("device", ["mps", "xpu"])
def test_auto_on_an_unmeasured_device_keeps_any_width(device):
    assert auto_align(_shape(1536), device) == 1


@pytest.mark.parametrize(
    "given,want", [("auto", AUTO), ("AUTO", AUTO), ("64", 64), (1, 1), (128, 128)]
)
def test_parse_accepts_auto_and_positive_integers(given, want):
    assert parse_align(given) == want


@pytest.mark.parametrize("bad", ["abc", "0", "-8", "1.5", "", 0, -1, 2.0, True])
def test_parse_refuses_anything_else_in_one_line(bad):
    with pytest.raises(GraspError, match="--align .* is not 'auto' or a positive integer") as err:
        parse_align(bad)
    assert "\n" not in str(err.value)


def test_resolve_gives_integers_unchanged():
    assert resolve_align(7, _shape(1536), "cuda") == 7
    assert resolve_align("auto", _shape(1536), "cuda") == 64
    assert resolve_align("auto", _shape(1536), "cpu") == 64
    assert resolve_align("auto", _shape(192), "cpu") == 8  # the tiny test models: 24 blocks


@pytest.mark.parametrize("device,ffn,want", [("cpu", 1536, 64), ("cuda", 1536, 64),
                                              ("cpu", 96, 32), ("cuda", 96, 32)])
def test_auto_for_a_kernel_rule_is_a_multiple_of_both(device, ffn, want):
    # w4a16's kernel needs multiples of 32 even where the model is too narrow for the device's
    assert resolve_align("auto", _shape(ffn), device, multiple=32) == want
    assert resolve_align(16, _shape(ffn), device, multiple=32) == 16  # checked by the caller
