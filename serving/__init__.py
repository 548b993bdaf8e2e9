"""grasp-deploy's vLLM adapter (import name ``grasp_serving``).

* ``register()``: the ``vllm.general_plugins`` entry point; registers the architectures
  ``GraspLlamaForCausalLM``, ``GraspMistralForCausalLM``, ``GraspQwen2ForCausalLM`` and
  ``GraspQwen3ForCausalLM`` lazily
  (as "module:Class" strings) and the checkpoints' config classes.
* ``vllm_model``: vLLM's Llama (and Mistral), Qwen2 and Qwen3 with one decoder layer per
  ``per_layer_config`` entry.
* ``tp``: which per-layer head counts a tensor-parallel degree can split.

Imports torch, transformers and vllm, and from grasp-deploy only the checkpoint format
(``grasp_deploy.checkpoint.format`` and its ``hf`` config class); never the pruner. The server
process itself is started by ``grasp_deploy.server``.
"""

from __future__ import annotations


def register() -> None:
    """Make vLLM and transformers know grasp checkpoints (every family's architecture and
    config class). Safe to call any number of times."""
    import importlib

    from transformers import AutoConfig
    from vllm import ModelRegistry

    from grasp_deploy.checkpoint.format import PRUNED_MODEL_TYPES

    for kind in PRUNED_MODEL_TYPES.values():
        config_class = getattr(importlib.import_module(kind.modules[0]), kind.config_class)
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        if kind.architecture not in ModelRegistry.get_supported_archs():
            # Lazily, by name: vLLM imports the model module only when it serves one.
            ModelRegistry.register_model(kind.architecture,
                                         f"grasp_serving.vllm_model:{kind.architecture}")
