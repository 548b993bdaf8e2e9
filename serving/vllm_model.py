"""vLLM's Llama with per-layer FFN widths and KV/query head counts.

Only construction differs from vLLM's ``LlamaForCausalLM``: its ``layer_type`` hook gets a
decoder layer that reads its own sizes from ``per_layer_config``. Weight loading (q/k/v into
qkv_proj, gate/up into gate_up_proj) and the KV cache (one spec per attention layer, so memory
follows each layer's own KV heads) are vLLM's.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.utils import extract_layer_index

from grasp_deploy.checkpoint.format import (
    BIAS_FIELDS,
    GROUP_SIZE_FIELD,
    kv_heads_per_layer,
    layer_config,
)

from .tp import check_tp


class GraspLlamaDecoderLayer(LlamaDecoderLayer):
    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config: Any = None, **kwargs):
        config = config or vllm_config.model_config.hf_config
        super().__init__(vllm_config, prefix=prefix,
                         config=layer_config(config, extract_layer_index(prefix)), **kwargs)
        # Compensation biases some pruning methods add (FLAP): the same projection, with a bias.
        quant = self.get_quant_config(vllm_config)
        if getattr(config, BIAS_FIELDS["o_proj"], False):
            self.self_attn.o_proj = _with_bias(self.self_attn.o_proj, quant)
        if getattr(config, BIAS_FIELDS["down_proj"], False):
            self.mlp.down_proj = _with_bias(self.mlp.down_proj, quant)


def _with_bias(layer: RowParallelLinear, quant_config: Any) -> RowParallelLinear:
    if layer.bias is not None:
        return layer
    return RowParallelLinear(input_size=layer.input_size, output_size=layer.output_size, bias=True,
                             quant_config=quant_config, reduce_results=layer.reduce_results,
                             prefix=layer.prefix)


class GraspLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        config = vllm_config.model_config.hf_config
        check_tp(kv_heads_per_layer(config), int(getattr(config, GROUP_SIZE_FIELD, 1) or 1),
                 vllm_config.parallel_config.tensor_parallel_size)
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=GraspLlamaDecoderLayer)
