"""grasp-deploy's vLLM adapter (import name ``grasp_serving``).

* ``register()``: the ``vllm.general_plugins`` entry point; registers the architecture
  ``GraspLlamaForCausalLM`` lazily (as a "module:Class" string) and the checkpoint's config class.
* ``vllm_model.GraspLlamaForCausalLM``: vLLM's Llama with one decoder layer per
  ``per_layer_config`` entry.
* ``tp``: which per-layer head counts a tensor-parallel degree can split.

Imports torch, transformers and vllm, and from grasp-deploy only the checkpoint format
(``grasp_deploy.checkpoint.format`` and its ``hf`` config class); never the pruner. The server
process itself is started by ``grasp_deploy.server``.
"""

from __future__ import annotations

_MODEL_PATH = "grasp_serving.vllm_model:GraspLlamaForCausalLM"


def register() -> None:
    """Make vLLM and transformers know grasp checkpoints. Safe to call any number of times."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from grasp_deploy.checkpoint.format import ARCHITECTURE
    from grasp_deploy.checkpoint.hf.configuration_grasp_llama import GraspLlamaConfig

    AutoConfig.register(GraspLlamaConfig.model_type, GraspLlamaConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, _MODEL_PATH)
