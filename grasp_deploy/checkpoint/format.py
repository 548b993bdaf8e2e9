"""Every name and constant of the checkpoint format (stdlib only: the vLLM adapter imports it).

CKPT/
  config.json                   source Llama fields + per_layer_config + auto_map
  configuration_grasp_llama.py  \\ the transformers classes, so that stock transformers loads
  modeling_grasp_llama.py       /  it with trust_remote_code=True
  model.safetensors             (or model-0000i-of-0000n.safetensors + index)
  tokenizer files, generation_config.json, chat template
  grasp_manifest.json           provenance, counts, widths, sha256 per weight file
  README.md                     model card

``hf/configuration_grasp_llama.py`` must stay self-contained, so it carries its own copy of
``layer_config``; a test checks that the two agree.
"""

from __future__ import annotations

import copy
from typing import Any

ARCHITECTURE = "GraspLlamaForCausalLM"
MODEL_TYPE = "grasp_llama"
# Query heads per KV head, stored once: layer i has num_key_value_heads(i) x this many.
GROUP_SIZE_FIELD = "query_heads_per_kv_head"
# transformers' own field for per-layer config patches: {"0": {"intermediate_size": ...}, ...}
PER_LAYER_FIELD = "per_layer_config"
# Projections that gain a bias the source architecture lacks (a method's compensation).
BIAS_FIELDS = {"o_proj": "o_proj_bias", "down_proj": "down_proj_bias"}

MANIFEST = "grasp_manifest.json"
MANIFEST_FORMAT = "grasp-deploy checkpoint v1"
CARD = "README.md"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
REMOTE_CODE = ("configuration_grasp_llama.py", "modeling_grasp_llama.py")
AUTO_MAP = {
    "AutoConfig": "configuration_grasp_llama.GraspLlamaConfig",
    "AutoModelForCausalLM": "modeling_grasp_llama.GraspLlamaForCausalLM",
}


def is_pruned_config(config: Any) -> bool:
    """True for the config of a checkpoint this format describes."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(
        config, "model_type", None)
    return model_type == MODEL_TYPE


def layer_config(config: Any, index: int) -> Any:
    """Layer ``index``'s config: its per-layer patch, with query heads = KV heads x group size."""
    base = config.per_layer_config[index] if getattr(config, "is_heterogeneous", False) else config
    layer = copy.deepcopy(base)
    group = getattr(config, GROUP_SIZE_FIELD, None)
    if group:
        layer.num_attention_heads = layer.num_key_value_heads * int(group)
    return layer


def kv_heads_per_layer(config: Any) -> list[int]:
    return [layer_config(config, i).num_key_value_heads for i in range(config.num_hidden_layers)]


def weight_file_name(index: int, count: int) -> str:
    """Name of shard ``index`` (1-based) of ``count``, as transformers writes them."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"
