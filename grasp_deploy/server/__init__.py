"""Starting, watching and stopping vLLM's OpenAI-compatible server (a subprocess; no vLLM
import here). Used by ``serve``, ``bench`` and ``prune-and-serve``."""
