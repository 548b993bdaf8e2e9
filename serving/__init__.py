"""grasp-deploy's vLLM adapter (import name ``grasp_serving``).

* ``register()``: the ``vllm.general_plugins`` entry point; registers the architecture
  ``GraspLlamaForCausalLM`` lazily (as a "module:Class" string) and the checkpoint's config class.
* ``vllm_model.GraspLlamaForCausalLM``: vLLM's Llama with one decoder layer per
  ``per_layer_config`` entry.
* ``launcher``: starts, watches and stops vLLM's OpenAI-compatible server.

Imports torch, transformers and vllm and the checkpoint config schema; never the pruner.
"""

from __future__ import annotations

ARCHITECTURE = "GraspLlamaForCausalLM"
_MODEL_PATH = "grasp_serving.vllm_model:GraspLlamaForCausalLM"


def register() -> None:
    """Make vLLM and transformers know grasp checkpoints. Safe to call any number of times."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from grasp_deploy.hf.configuration_grasp_llama import GraspLlamaConfig

    AutoConfig.register(GraspLlamaConfig.model_type, GraspLlamaConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL_PATH)
