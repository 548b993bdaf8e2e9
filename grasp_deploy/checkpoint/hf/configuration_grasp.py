"""Configs of pruned models: each family's transformers config whose layers differ in width.

This file is copied into every exported checkpoint and must import nothing but transformers.

Per-layer widths use transformers' own ``per_layer_config`` patches
(``{"0": {"intermediate_size": 812, "num_key_value_heads": 2}, ...}``). Query heads follow
from the KV heads: layer i has ``num_key_value_heads(i) * query_heads_per_kv_head`` of them.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config


class GraspConfigMixin:
    """What a pruned model's config adds to its family's: the query heads per KV head, the
    compensation biases a method may add, and each layer's own config."""

    # the family's config class this mixes into sets these
    num_attention_heads: Any
    num_key_value_heads: Any
    per_layer_config: Any
    is_heterogeneous: Any

    def __init__(self, query_heads_per_kv_head: int | None = None, o_proj_bias: bool = False,
                 down_proj_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if query_heads_per_kv_head is None:
            query_heads_per_kv_head = self.num_attention_heads // self.num_key_value_heads
        self.query_heads_per_kv_head = int(query_heads_per_kv_head)
        # Optional biases some pruning methods add as compensation (never for GRASPrune).
        self.o_proj_bias = bool(o_proj_bias)
        self.down_proj_bias = bool(down_proj_bias)

    def layer_config(self, index: int) -> Any:
        """A plain config of the family with layer ``index``'s own FFN width and head counts."""
        base = self.per_layer_config[index] if self.is_heterogeneous else self
        layer = copy.deepcopy(base)
        layer.num_attention_heads = layer.num_key_value_heads * self.query_heads_per_kv_head
        return layer


class GraspLlamaConfig(GraspConfigMixin, LlamaConfig):
    model_type = "grasp_llama"


class GraspMistralConfig(GraspConfigMixin, MistralConfig):
    model_type = "grasp_mistral"


class GraspQwen2Config(GraspConfigMixin, Qwen2Config):
    model_type = "grasp_qwen2"


class GraspQwen3Config(GraspConfigMixin, Qwen3Config):
    model_type = "grasp_qwen3"


__all__ = ["GraspLlamaConfig", "GraspMistralConfig", "GraspQwen2Config", "GraspQwen3Config"]
