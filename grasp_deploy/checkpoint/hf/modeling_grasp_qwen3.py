"""Qwen3 whose decoder layers each have their own FFN width and number of KV/query heads.

This file is copied into every exported checkpoint next to ``configuration_grasp_qwen3.py``
and must import nothing but torch and transformers. q_norm/k_norm (over head_dim, shared
by the heads) are kept as they are. Only construction differs from
transformers' Qwen3: each layer is built from ``config.layer_config(i)``; forward, generation
and the KV cache are transformers' own (the cache stores each layer's tensors as they come).
"""

from __future__ import annotations

from torch import nn
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3ForCausalLM,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

try:  # inside a checkpoint directory (trust_remote_code)
    from .configuration_grasp_qwen3 import GraspQwen3Config
except ImportError:  # pragma: no cover - loaded as a top-level module
    from configuration_grasp_qwen3 import GraspQwen3Config


class GraspQwen3DecoderLayer(Qwen3DecoderLayer):
    def __init__(self, config: GraspQwen3Config, layer_idx: int):
        layer_config = config.layer_config(layer_idx)
        super().__init__(layer_config, layer_idx)
        # Optional compensation biases (e.g. FLAP); zero-initialised, loaded from the weights.
        if config.o_proj_bias and self.self_attn.o_proj.bias is None:
            self.self_attn.o_proj.bias = nn.Parameter(self.self_attn.o_proj.weight.new_zeros(config.hidden_size))
        if config.down_proj_bias and self.mlp.down_proj.bias is None:
            self.mlp.down_proj.bias = nn.Parameter(self.mlp.down_proj.weight.new_zeros(config.hidden_size))


class GraspQwen3PreTrainedModel(Qwen3PreTrainedModel):
    config_class = GraspQwen3Config
    config: GraspQwen3Config
    _no_split_modules = ["GraspQwen3DecoderLayer"]


class GraspQwen3Model(GraspQwen3PreTrainedModel, Qwen3Model):
    def __init__(self, config: GraspQwen3Config):
        # Qwen3Model.__init__ would build uniform layers from global sizes; build ours instead.
        GraspQwen3PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [GraspQwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in (getattr(config, "layer_types", None) or ())
        self.post_init()


class GraspQwen3ForCausalLM(GraspQwen3PreTrainedModel, Qwen3ForCausalLM):
    def __init__(self, config: GraspQwen3Config):
        GraspQwen3PreTrainedModel.__init__(self, config)
        self.model = GraspQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["GraspQwen3Config", "GraspQwen3ForCausalLM", "GraspQwen3Model"]
