"""Every name and constant of the checkpoint format (stdlib only: the vLLM adapter imports it).

CKPT/
  config.json                   source fields + per_layer_config + auto_map
  configuration_grasp.py        \\ the transformers classes of every family (one pair), so that
  modeling_grasp.py             /  stock transformers loads it (trust_remote_code=True)
  model.safetensors             (or model-0000i-of-0000n.safetensors + index)
  tokenizer files, generation_config.json, chat template
  grasp_manifest.json           provenance, counts, widths, sha256 per weight file
  README.md                     model card

The ``hf/configuration_grasp.py`` file must stay self-contained, so it carries its own copy
of ``layer_config``; a test checks that they agree. Checkpoints written before one pair served
every family ship ``configuration_grasp_<f>.py`` and ``modeling_grasp_<f>.py`` (f: llama,
mistral, qwen2, qwen3) and name them in their ``auto_map``; they load as they are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """What a checkpoint of one family is called and which remote code it ships."""

    architecture: str  # config.json "architectures"
    model_type: str  # config.json "model_type"
    remote_code: tuple[str, str]  # (configuration file, modeling file)

    @property
    def config_class(self) -> str:
        return self.architecture.replace("ForCausalLM", "Config")

    @property
    def modules(self) -> tuple[str, str]:
        """Import paths of the remote code as it ships inside grasp_deploy (config, modeling)."""
        config, modeling = (name.removesuffix(".py") for name in self.remote_code)
        return f"grasp_deploy.checkpoint.hf.{config}", f"grasp_deploy.checkpoint.hf.{modeling}"

    @property
    def auto_map(self) -> dict[str, str]:
        config, modeling = (name.removesuffix(".py") for name in self.remote_code)
        return {"AutoConfig": f"{config}.{self.config_class}",
                "AutoModelForCausalLM": f"{modeling}.{self.architecture}"}


REMOTE_CODE = ("configuration_grasp.py", "modeling_grasp.py")  # every family's classes


def _kind(stem: str, name: str) -> Kind:
    return Kind(f"Grasp{name}ForCausalLM", f"grasp_{stem}", REMOTE_CODE)


LLAMA, MISTRAL = _kind("llama", "Llama"), _kind("mistral", "Mistral")
QWEN2, QWEN3 = _kind("qwen2", "Qwen2"), _kind("qwen3", "Qwen3")
# Source family (config model_type) -> the checkpoint it exports to.
KINDS = {"llama": LLAMA, "mistral": MISTRAL, "qwen2": QWEN2, "qwen3": QWEN3}
PRUNED_MODEL_TYPES = {k.model_type: k for k in KINDS.values()}

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


def kind_of(model_type: str) -> Kind:
    """The checkpoint kind for a source family, or for an already pruned checkpoint's type."""
    if model_type in PRUNED_MODEL_TYPES:
        return PRUNED_MODEL_TYPES[model_type]
    return KINDS[model_type]


def is_pruned_config(config: Any) -> bool:
    """True for the config of a checkpoint this format describes."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(
        config, "model_type", None)
    return model_type in PRUNED_MODEL_TYPES


def layer_config(config: Any, index: int) -> Any:
    """Layer ``index``'s config: its per-layer patch, with query heads = KV heads x group size."""
    base = config.per_layer_config[index] if getattr(config, "is_heterogeneous", False) else config
    layer = copy.deepcopy(base)
    group = getattr(config, GROUP_SIZE_FIELD, None)
    if group:
        layer.num_attention_heads = layer.num_key_value_heads * int(group)
    return layer


def weight_file_name(index: int, count: int) -> str:
    """Name of shard ``index`` (1-based) of ``count``, as transformers writes them."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"
