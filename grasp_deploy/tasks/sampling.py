"""Text a served model writes itself: the data of data-free healing, sampled through vLLM.

The blocks match ``sources.text.sample_from_model`` (transformers' generate): each starts at one
token (the model's beginning-of-text token, or the end-of-text token that pre-training puts
between documents), continues for exactly ``seq_len - 1`` sampled tokens at temperature 1 with
nucleus ``top_p``, and comes back as token ids (``return_token_ids``), so nothing is lost to
detokenizing and tokenizing again. Block k is drawn with seed ``seed * 1_000_003 + k``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import GraspError
from .endpoint import Endpoint, parallel_map, request


def sample_block(endpoint: Endpoint, start: int, seq_len: int, seed: int, top_p: float = 0.95,
                 timeout: float = 600.0) -> list[int]:
    """``[start]`` and the ``seq_len - 1`` token ids the endpoint samples after it."""
    n = seq_len - 1
    reply = request(endpoint, "/v1/completions",
                    {"model": endpoint.model, "prompt": [start], "max_tokens": n, "min_tokens": n,
                     "temperature": 1.0, "top_p": top_p, "top_k": -1, "seed": seed,
                     "return_token_ids": True}, timeout)
    ids = reply["choices"][0].get("token_ids")
    if not isinstance(ids, list) or len(ids) != n:
        got = len(ids) if isinstance(ids, list) else "no"
        raise GraspError(f"{endpoint.url} returned {got} token ids for a sample of {n}: the "
                         "server must be vLLM (its min_tokens and return_token_ids parameters)")
    return [start, *ids]


def sample_blocks(endpoint: Endpoint, start: int, count: int, seq_len: int, seed: int,
                  width: int = 32, top_p: float = 0.95,
                  on_block: Callable[[int], None] | None = None) -> list[list[int]]:
    """``count`` sampled blocks of ``seq_len`` tokens, ``width`` requests in flight (32: on a
    2-core CPU, vLLM served x1.74 the output tokens/s at 32 users as at 8,
    bench/results/ab-int8-smollm2-r50)."""
    return parallel_map(lambda k: sample_block(endpoint, start, seq_len, seed * 1_000_003 + k,
                                               top_p),
                        list(range(count)), width, on_block or (lambda _n: None))
