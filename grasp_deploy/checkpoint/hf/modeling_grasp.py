"""Pruned models: each family's transformers model whose decoder layers have their own FFN
width and number of KV/query heads.

This file is copied into every exported checkpoint next to ``configuration_grasp.py`` and
must import nothing but torch and transformers. Every class is transformers' own with one
change: the decoder layer is built from ``config.layer_config(i)`` (plus any compensation
bias). The model's and the causal LM's constructors are transformers' own functions, run with
the family's decoder-layer (or model) class name bound to ours; forward, generation, the KV
cache (each layer's tensors as they come) and everything the constructors set up, such as
Qwen's sliding-window flags, are transformers' as they are.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import nn
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

try:  # inside a checkpoint directory (trust_remote_code)
    from .configuration_grasp import (
        GraspLlamaConfig,
        GraspMistralConfig,
        GraspQwen2Config,
        GraspQwen3Config,
    )
except ImportError:  # pragma: no cover - loaded as a top-level module
    from configuration_grasp import (  # type: ignore[no-redef]
        GraspLlamaConfig,
        GraspMistralConfig,
        GraspQwen2Config,
        GraspQwen3Config,
    )


def with_names(function: Callable, **names: Any) -> Callable:
    """``function`` with some global names of its module bound to other objects: the same code,
    defaults and closure (so ``super()`` still works), over a copy of the module's globals."""
    unused = set(names) - _global_names(function.__code__)
    if unused:  # transformers changed the constructor: fail loudly, not with wrong layers
        raise TypeError(f"{function.__qualname__} no longer refers to {sorted(unused)}")
    scope = {**function.__globals__, **names}
    copy = types.FunctionType(function.__code__, scope, function.__name__, function.__defaults__,
                              function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    return copy


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and those nested in it, such as comprehensions) looks up."""
    nested = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return set(code.co_names).union(*(_global_names(c) for c in nested))


def _add_compensation_biases(layer: Any, config: Any) -> None:
    """Zero biases (loaded from the weights) where a method added them, e.g. FLAP's."""
    for wanted, proj in ((config.o_proj_bias, layer.self_attn.o_proj),
                         (config.down_proj_bias, layer.mlp.down_proj)):
        if wanted and proj.bias is None:
            proj.bias = nn.Parameter(proj.weight.new_zeros(config.hidden_size))


def _family(family: str, module: Any, config_class: type) -> tuple[type, type, type, type]:
    """(decoder layer, pretrained base, model, causal LM) of ``family`` with per-layer widths."""
    base_layer = getattr(module, f"{family}DecoderLayer")
    base_pretrained = getattr(module, f"{family}PreTrainedModel")
    base_model = getattr(module, f"{family}Model")
    base_lm = getattr(module, f"{family}ForCausalLM")
    name = f"Grasp{family}"

    def layer_init(self: Any, config: Any, layer_idx: int) -> None:
        base_layer.__init__(self, config.layer_config(layer_idx), layer_idx)
        _add_compensation_biases(self, config)

    layer = type(f"{name}DecoderLayer", (base_layer,), {"__init__": layer_init})
    pretrained = type(f"{name}PreTrainedModel", (base_pretrained,), {
        "config_class": config_class, "_no_split_modules": [layer.__name__],
        "__annotations__": {"config": config_class}})
    model = type(f"{name}Model", (pretrained, base_model), {
        "__init__": with_names(base_model.__init__, **{base_layer.__name__: layer})})
    lm = type(f"{name}ForCausalLM", (pretrained, base_lm), {
        "__init__": with_names(base_lm.__init__, **{base_model.__name__: model})})
    for cls in (layer, pretrained, model, lm):
        cls.__module__ = __name__
    return layer, pretrained, model, lm


(GraspLlamaDecoderLayer, GraspLlamaPreTrainedModel, GraspLlamaModel,
 GraspLlamaForCausalLM) = _family("Llama", modeling_llama, GraspLlamaConfig)
# Mistral has its own classes, not Llama's: its attention and causal mask honour
# ``sliding_window`` (4096 in v0.1), Llama's ignore it.
(GraspMistralDecoderLayer, GraspMistralPreTrainedModel, GraspMistralModel,
 GraspMistralForCausalLM) = _family("Mistral", modeling_mistral, GraspMistralConfig)
# q/k/v biases are kept with their heads; o_proj has none unless a method adds one.
(GraspQwen2DecoderLayer, GraspQwen2PreTrainedModel, GraspQwen2Model,
 GraspQwen2ForCausalLM) = _family("Qwen2", modeling_qwen2, GraspQwen2Config)
# q_norm/k_norm (over head_dim, shared by the heads) are kept as they are.
(GraspQwen3DecoderLayer, GraspQwen3PreTrainedModel, GraspQwen3Model,
 GraspQwen3ForCausalLM) = _family("Qwen3", modeling_qwen3, GraspQwen3Config)

__all__ = ["GraspLlamaConfig", "GraspLlamaForCausalLM", "GraspLlamaModel", "GraspMistralConfig",
           "GraspMistralForCausalLM", "GraspMistralModel", "GraspQwen2Config",
           "GraspQwen2ForCausalLM", "GraspQwen2Model", "GraspQwen3Config", "GraspQwen3ForCausalLM",
           "GraspQwen3Model"]
