"""Qwen2 whose decoder layers each have their own FFN width and number of KV/query heads.

This file is copied into every exported checkpoint next to ``configuration_grasp_qwen2.py``
and must import nothing but torch and transformers. q/k/v biases are kept with their
heads; o_proj has none unless a method adds one. Only construction differs from
transformers' Qwen2: each layer is built from ``config.layer_config(i)``; forward, generation
and the KV cache are transformers' own (the cache stores each layer's tensors as they come).
"""

from __future__ import annotations

from torch import nn
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

try:  # inside a checkpoint directory (trust_remote_code)
    from .configuration_grasp_qwen2 import GraspQwen2Config
except ImportError:  # pragma: no cover - loaded as a top-level module
    from configuration_grasp_qwen2 import GraspQwen2Config


class GraspQwen2DecoderLayer(Qwen2DecoderLayer):
    def __init__(self, config: GraspQwen2Config, layer_idx: int):
        layer_config = config.layer_config(layer_idx)
        super().__init__(layer_config, layer_idx)
        # Optional compensation biases (e.g. FLAP); zero-initialised, loaded from the weights.
        if config.o_proj_bias and self.self_attn.o_proj.bias is None:
            self.self_attn.o_proj.bias = nn.Parameter(self.self_attn.o_proj.weight.new_zeros(config.hidden_size))
        if config.down_proj_bias and self.mlp.down_proj.bias is None:
            self.mlp.down_proj.bias = nn.Parameter(self.mlp.down_proj.weight.new_zeros(config.hidden_size))


class GraspQwen2PreTrainedModel(Qwen2PreTrainedModel):
    config_class = GraspQwen2Config
    config: GraspQwen2Config
    _no_split_modules = ["GraspQwen2DecoderLayer"]


class GraspQwen2Model(GraspQwen2PreTrainedModel, Qwen2Model):
    def __init__(self, config: GraspQwen2Config):
        # Qwen2Model.__init__ would build uniform layers from global sizes; build ours instead.
        GraspQwen2PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [GraspQwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in (getattr(config, "layer_types", None) or ())
        self.post_init()


class GraspQwen2ForCausalLM(GraspQwen2PreTrainedModel, Qwen2ForCausalLM):
    def __init__(self, config: GraspQwen2Config):
        GraspQwen2PreTrainedModel.__init__(self, config)
        self.model = GraspQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["GraspQwen2Config", "GraspQwen2ForCausalLM", "GraspQwen2Model"]
