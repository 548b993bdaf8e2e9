"""Perplexity as served: the engine that answers users scores the text.

The protocol of ``grasp-deploy eval`` (consecutive non-overlapping ``seq_len`` windows of the
whole text, tokenized once; perplexity = exp(mean over windows of the mean token NLL)), with
every number from the endpoint: the server's own tokenizer (``/tokenize``) cuts the text, and
each window is sent as token ids to ``/v1/completions`` with ``prompt_logprobs=0``, which
returns the log-probability the model gives each prompt token after the ones before it. So a
quantized or pruned model is scored with the kernels, dtype and weights vLLM runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..core.errors import GraspError
from .endpoint import Endpoint, parallel_map, request


def tokenize(endpoint: Endpoint, text: str, timeout: float = 600.0) -> list[int]:
    """Token ids of the whole ``text`` as the server's tokenizer encodes it (special tokens
    added, as ``tokenizer(text)`` does)."""
    reply = request(endpoint, "/tokenize", {"model": endpoint.model, "prompt": text}, timeout)
    tokens = reply.get("tokens")
    if not isinstance(tokens, list):
        raise GraspError(f"{endpoint.url}/tokenize answered without tokens: is it a vLLM server?")
    return tokens


def prompt_logprobs(endpoint: Endpoint, ids: list[int], timeout: float = 600.0) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, as the endpoint computes them."""
    reply = request(endpoint, "/v1/completions",
                    {"model": endpoint.model, "prompt": ids, "max_tokens": 1, "temperature": 0,
                     "prompt_logprobs": 0}, timeout)
    rows = reply["choices"][0].get("prompt_logprobs")
    if not rows or len(rows) != len(ids):
        raise GraspError(f"{endpoint.url} returned no prompt logprobs for a window of {len(ids)} "
                         "tokens: the server must be vLLM (its prompt_logprobs parameter)")
    out = []
    for t in range(1, len(ids)):
        entry = rows[t] or {}
        hit = entry.get(str(ids[t]))  # the prompt token's own logprob is always among them
        if hit is None:
            raise GraspError(f"{endpoint.url} returned no logprob for prompt token {t}")
        out.append(float(hit["logprob"]))
    return out


def served_perplexity(endpoint: Endpoint, ids: list[int], seq_len: int,
                      max_windows: int | None = None, concurrency: int = 2,
                      on_window: Callable[[int, int], None] | None = None
                      ) -> tuple[float, int]:
    """(mean window NLL, windows) of the served model on the token stream ``ids``."""
    windows = len(ids) // seq_len
    if windows == 0:
        raise GraspError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}; "
                         "use a shorter --seq-len")
    if max_windows is not None:
        windows = min(windows, max_windows)
    blocks = [ids[k * seq_len:(k + 1) * seq_len] for k in range(windows)]
    tick = on_window or (lambda _done, _total: None)
    nlls = parallel_map(lambda block: -math.fsum(prompt_logprobs(endpoint, block)) / (seq_len - 1),
                        blocks, concurrency, lambda done: tick(done, windows))
    return math.fsum(nlls) / windows, windows
