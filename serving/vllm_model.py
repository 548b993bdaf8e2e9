"""vLLM's Llama (and Mistral), Qwen2 and Qwen3 with per-layer FFN widths and KV/query head counts.

Only construction differs from vLLM's own models: a decoder layer that reads its own sizes from
``per_layer_config``, given to vLLM through its decoder-layer hooks (``layer_type`` of
``LlamaForCausalLM``, which also serves Qwen2 with its q/k/v biases; ``decoder_layer_type`` of
``Qwen3Model``). Weight loading
(q/k/v into qkv_proj, gate/up into gate_up_proj, Qwen2's q/k/v biases, Qwen3's q_norm/k_norm)
and the KV cache (one spec per attention layer, so memory follows each layer's own KV heads)
are vLLM's.
"""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import RowParallelLinear
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM, Qwen3Model
from vllm.model_executor.models.utils import extract_layer_index

from grasp_deploy.checkpoint.format import BIAS_FIELDS, layer_config
from grasp_deploy.checkpoint.hf.modeling_grasp import with_names
from grasp_deploy.checkpoint.parallel import parallel_problem


class GraspLlamaDecoderLayer(LlamaDecoderLayer):
    overrides: dict[str, Any] = {}  # set on every layer's config (a family's differences)

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", config: Any = None, **kwargs):
        config = config or vllm_config.model_config.hf_config
        layer = layer_config(config, extract_layer_index(prefix))
        for name, value in self.overrides.items():
            setattr(layer, name, value)
        super().__init__(vllm_config, prefix=prefix, config=layer, **kwargs)
        _add_compensation_biases(self, config, self.get_quant_config(vllm_config))


def _add_compensation_biases(layer: Any, config: Any, quant_config: Any) -> None:
    """Biases some pruning methods add (FLAP): the same projection, with a bias."""
    if getattr(config, BIAS_FIELDS["o_proj"], False):
        layer.self_attn.o_proj = _with_bias(layer.self_attn.o_proj, quant_config)
    if getattr(config, BIAS_FIELDS["down_proj"], False):
        layer.mlp.down_proj = _with_bias(layer.mlp.down_proj, quant_config)


def _with_bias(layer: RowParallelLinear, quant_config: Any) -> RowParallelLinear:
    if layer.bias is not None:
        return layer
    return RowParallelLinear(input_size=layer.input_size, output_size=layer.output_size, bias=True,
                             quant_config=quant_config, reduce_results=layer.reduce_results,
                             prefix=layer.prefix)


def _check_tp(vllm_config: VllmConfig) -> None:
    """The same check ``serve`` makes before start-up, for servers started some other way."""
    parallel = vllm_config.parallel_config
    problem = parallel_problem(vllm_config.model_config.hf_config,
                               parallel.tensor_parallel_size, parallel.pipeline_parallel_size)
    if problem:
        raise ValueError(problem)


class GraspLlamaForCausalLM(LlamaForCausalLM):
    decoder_layer: type = GraspLlamaDecoderLayer  # what each family's subclass builds

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        _check_tp(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=self.decoder_layer)


class GraspMistralForCausalLM(GraspLlamaForCausalLM):
    """Mistral (HF layout) is vLLM's Llama; its ``sliding_window`` reaches every attention layer
    through vLLM's cache config, as for vLLM's own Mistral."""


# -- Qwen2 / Qwen2.5 ---------------------------------------------------------------------------
class GraspQwen2DecoderLayer(GraspLlamaDecoderLayer):
    """Qwen2 is Llama with biases on q/k/v (none on o_proj): vLLM's Llama layer takes them as
    ``qkv_bias`` and honours the explicit ``head_dim``, which vLLM's own Qwen2 attention
    (head_dim = hidden / heads) cannot once a layer's heads are pruned."""

    overrides = {"qkv_bias": True}


class GraspQwen2ForCausalLM(GraspLlamaForCausalLM):
    decoder_layer = GraspQwen2DecoderLayer


# -- Qwen3 -------------------------------------------------------------------------------------
class GraspQwen3DecoderLayer(Qwen3DecoderLayer):
    """vLLM's Qwen3 decoder layer built from its own layer's config."""

    def __init__(self, config: Any, cache_config: Any = None, quant_config: Any = None,
                 prefix: str = "") -> None:
        super().__init__(layer_config(config, extract_layer_index(prefix)), cache_config,
                         quant_config, prefix)
        _add_compensation_biases(self, config, quant_config)


class GraspQwen3Model(Qwen3Model):
    decoder_layer_type = GraspQwen3DecoderLayer


class GraspQwen3ForCausalLM(Qwen3ForCausalLM):
    # vLLM's constructor, run with its name ``Qwen3Model`` bound to ours: vLLM builds the model
    # by that name and offers no hook for it.
    _build = with_names(Qwen3ForCausalLM.__init__, Qwen3Model=GraspQwen3Model)

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        _check_tp(vllm_config)
        self._build(vllm_config=vllm_config, prefix=prefix)
