"""What healing trains on: blocks of a text source, blocks the teacher samples itself
(data-free), or both, split into held-out and training blocks in a seeded order.

The teacher's samples come from a vLLM server of the teacher where vLLM is installed (many
requests in flight; far faster than transformers' generate, which is the fallback). They are
cached by teacher fingerprint, count, length and seed (``CACHE/samples``), so that the runs of a
sweep share one draw.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..core.errors import GraspError
from ..server.launcher import ServerConfig, VllmServer
from ..server.net import free_port
from ..sources import text
from ..sources.cache import cache_root
from ..tasks.endpoint import Endpoint
from ..tasks.sampling import sample_blocks
from . import serve

TOP_P = 0.95  # as data-free calibration (sources.text.sample_from_model)


def text_ids(spec: str, eval_data: str | None, tokenizer: Any) -> torch.Tensor | None:
    """The token ids of ``--data`` (None for ``self``), refused when it is the evaluation text
    or overlaps ``--eval-data`` (one text holds the other)."""
    source = text.parse_source(spec, default_split="train", flag="--data")
    if source.is_model_sampled:
        return None
    if source.scheme == "wikitext2" and source.split == "test":
        raise GraspError(f"--data {spec} is the evaluation split; heal on wikitext2 (train) "
                         "or file:PATH")
    train = text.load_text(source)
    if eval_data is not None:
        held = text.load_text(text.parse_source(eval_data, default_split="test",
                                                allow_self=False, flag="--eval-data"))
        if held.strip() and (held.strip() in train or train.strip() in held):
            raise GraspError(f"--eval-data {eval_data} overlaps --data {spec} (one holds the "
                             "other): heal on text the evaluation does not use")
    return text.tokenize(tokenizer, train)


def split_blocks(ids: torch.Tensor | None, samples: torch.Tensor | None, seq_len: int,
                 held_out: int, batch_size: int, seed: int, what: str,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, training) blocks: held out from the text when there is one, else from the
    samples; the samples train beside the text's remaining blocks."""
    parts: list[torch.Tensor] = []
    if ids is not None:
        available = ids.numel() // seq_len
        held, rest = text.cut_blocks(ids, seq_len, (held_out, max(0, available - held_out)),
                                     seed, what=f"--data {what}")
        parts.append(rest)
    if samples is not None:
        if ids is None:
            if samples.shape[0] <= held_out:
                raise GraspError(f"--samples {samples.shape[0]} leaves no training block after "
                                 f"{held_out} held out; sample more")
            held, samples = samples[:held_out], samples[held_out:]
        parts.append(samples)
    train = torch.cat(parts)
    if train.shape[0] < batch_size:
        raise GraspError(f"--data {what} leaves {train.shape[0]} training blocks of {seq_len} "
                         f"tokens after {held_out} held out; give more text, a shorter --seq-len "
                         "or fewer --held-out")
    return held, train


@dataclass(frozen=True)
class SampleSpec:
    teacher: str  # the model spec a server opens
    fingerprint: str
    count: int
    seq_len: int
    seed: int
    engine: str = "auto"  # "vllm" | "transformers" | "auto" (vLLM where installed)
    server: tuple[tuple[str, Any], ...] = ()  # ServerConfig overrides (tests: eager, float32)

    def path(self) -> Path:
        digest = self.fingerprint.rpartition(":")[2][:16]
        return (cache_root() / "samples"
                / f"{digest}-{self.count}x{self.seq_len}-seed{self.seed}.safetensors")


def teacher_samples(spec: SampleSpec, teacher: Any, tokenizer: Any, progress: bool = True,
                    say: Callable[[str], None] = print) -> tuple[torch.Tensor, dict[str, Any]]:
    """(count, seq_len) token ids the teacher sampled, and where they came from."""
    path = spec.path()
    if path.is_file():  # one read: the ids and the record beside them
        with safe_open(str(path), "pt") as f:
            meta, ids = json.loads((f.metadata() or {})["record"]), f.get_tensor("ids")
        say(f"reusing {spec.count} teacher samples from {path}")
        return ids.long(), {**meta, "cached": str(path)}
    engine = spec.engine if spec.engine != "auto" else (
        "vllm" if importlib.util.find_spec("vllm") is not None else "transformers")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else \
        tokenizer.eos_token_id
    t0 = time.perf_counter()
    if engine == "vllm":
        ids = _through_vllm(spec, start, progress, say)
    else:
        say(f"sampling {spec.count} blocks from the teacher with transformers (no vLLM here)")
        ids = text.sample_from_model(teacher, tokenizer, spec.count, spec.seq_len, spec.seed,
                                     top_p=TOP_P, progress=progress)
    record = {"blocks": spec.count, "seq_len": spec.seq_len, "seed": spec.seed, "top_p": TOP_P,
              "temperature": 1.0, "engine": engine, "seconds": round(time.perf_counter() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"ids": ids.to(torch.int32).contiguous()}, str(tmp),
              metadata={"record": json.dumps(record)})
    os.replace(tmp, path)  # a killed run leaves no half file under the cached name
    return ids, record


def _through_vllm(spec: SampleSpec, start: int, progress: bool,
                  say: Callable[[str], None]) -> torch.Tensor:
    config = serve.resolve(ServerConfig(**{
        "model": spec.teacher, "port": free_port(), "max_model_len": spec.seq_len,
        "kv_cache_gb": 1.0, **dict(spec.server)}))
    with ExitStack() as stack:
        server = stack.enter_context(VllmServer(config, say=say))
        bar = stack.enter_context(tqdm(total=spec.count, desc="teacher samples (vLLM)",
                                       unit="block", disable=not progress, dynamic_ncols=True))
        blocks = sample_blocks(Endpoint(server.url, config.name), start, spec.count,
                               spec.seq_len, spec.seed, top_p=TOP_P,
                               on_block=lambda n: bar.update(n - bar.n))
    return torch.tensor(blocks, dtype=torch.long)
