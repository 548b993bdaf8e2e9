"""Tensor-parallel checks of per-layer head counts: pure, no vLLM needed."""

import pytest

from grasp_serving.tp import check_tp, tp_problems


def test_tp_check():
    assert tp_problems([2, 1, 2], 3, 1) == []
    assert tp_problems([2, 4, 2], 2, 2) == []
    assert tp_problems([2, 1, 2], 2, 2) == []  # 1 KV head replicated over 2 ranks, 2 query heads
    assert tp_problems([3, 2], 3, 2) == ["layer 0 (3 KV / 9 query heads)"]
    with pytest.raises(ValueError, match="--tp 2"):
        check_tp([3, 2], 3, 2)
