"""grasp-deploy: prune LLaMA-family models with GRASPrune, export, serve with vLLM, load-test."""

__version__ = "0.1.0"
