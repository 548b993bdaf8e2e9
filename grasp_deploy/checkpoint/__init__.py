"""The checkpoint format: the one place that knows it.

``format`` holds every name and constant (stdlib only, so the vLLM adapter can import it);
``write`` builds a checkpoint directory, ``read`` reads, verifies and inspects one, ``card``
writes its model card; ``hf/`` holds the transformers classes copied into every checkpoint.
"""
