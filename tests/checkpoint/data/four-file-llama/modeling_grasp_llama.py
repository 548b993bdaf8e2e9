"""Llama whose decoder layers each have their own FFN width and number of KV/query heads.

This file is copied into every exported checkpoint next to ``configuration_grasp_llama.py``
and must import nothing but torch and transformers. Only construction differs from
transformers' Llama: each layer is built from ``config.layer_config(i)``; forward, generation
and the KV cache are transformers' own (the cache stores each layer's tensors as they come).
"""

from __future__ import annotations

from torch import nn
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

try:  # inside a checkpoint directory (trust_remote_code)
    from .configuration_grasp_llama import GraspLlamaConfig
except ImportError:  # pragma: no cover - loaded as a top-level module
    from configuration_grasp_llama import GraspLlamaConfig


class GraspLlamaDecoderLayer(LlamaDecoderLayer):
    def __init__(self, config: GraspLlamaConfig, layer_idx: int):
        layer_config = config.layer_config(layer_idx)
        super().__init__(layer_config, layer_idx)
        # Optional compensation biases (e.g. FLAP); zero-initialised, loaded from the weights.
        if config.o_proj_bias and self.self_attn.o_proj.bias is None:
            self.self_attn.o_proj.bias = nn.Parameter(self.self_attn.o_proj.weight.new_zeros(config.hidden_size))
        if config.down_proj_bias and self.mlp.down_proj.bias is None:
            self.mlp.down_proj.bias = nn.Parameter(self.mlp.down_proj.weight.new_zeros(config.hidden_size))


class GraspLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = GraspLlamaConfig
    config: GraspLlamaConfig
    _no_split_modules = ["GraspLlamaDecoderLayer"]


class GraspLlamaModel(GraspLlamaPreTrainedModel, LlamaModel):
    def __init__(self, config: GraspLlamaConfig):
        # LlamaModel.__init__ would build uniform layers from global sizes; build ours instead.
        GraspLlamaPreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [GraspLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()


class GraspLlamaForCausalLM(GraspLlamaPreTrainedModel, LlamaForCausalLM):
    def __init__(self, config: GraspLlamaConfig):
        GraspLlamaPreTrainedModel.__init__(self, config)
        self.model = GraspLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


__all__ = ["GraspLlamaConfig", "GraspLlamaForCausalLM", "GraspLlamaModel"]
