"""grasp-deploy: prune LLaMA-family models with GRASPrune, export, serve with vLLM, load-test."""

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Let Auto* load exported checkpoints (model_type "grasp_llama") without remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .hf.configuration_grasp_llama import GraspLlamaConfig
    from .hf.modeling_grasp_llama import GraspLlamaForCausalLM

    AutoConfig.register(GraspLlamaConfig.model_type, GraspLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(GraspLlamaConfig, GraspLlamaForCausalLM, exist_ok=True)


_register_auto_classes()
