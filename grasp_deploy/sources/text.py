"""Text sources, one loader: ``wikitext2[:SPLIT]``, ``file:PATH`` and ``self``.

``self`` is data-free calibration: sequences sampled from the model being pruned.
Calibration blocks are non-overlapping ``seq_len``-token windows of the tokenized text, drawn
in a seeded order, so that stage A and stage B get disjoint blocks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import GraspError

SCHEMES = ("wikitext2", "file:PATH", "self")


@dataclass(frozen=True)
class TextSource:
    spec: str
    scheme: str  # "wikitext2" | "file" | "self"
    path: Path | None = None
    split: str | None = None

    @property
    def is_model_sampled(self) -> bool:
        return self.scheme == "self"


def parse_source(spec: str, default_split: str = "train", allow_self: bool = True,
                 flag: str = "--calib") -> TextSource:
    """Validate a source spec up front (scheme known, file present and readable)."""
    if spec == "self":
        if not allow_self:
            raise GraspError(f"{flag} self samples text from the model and only serves "
                             "calibration; evaluate on wikitext2 or file:PATH")
        return TextSource(spec, "self")
    if spec == "wikitext2" or spec.startswith("wikitext2:"):
        split = spec.partition(":")[2] or default_split
        if split not in ("train", "validation", "test"):
            raise GraspError(
                f"{flag} {spec}: unknown split {split!r}; use train, validation or test"
            )
        return TextSource(spec, "wikitext2", split=split)
    if spec.startswith("file:"):
        path = Path(spec[len("file:"):]).expanduser()
        if not path.is_file():
            raise GraspError(f"{flag} {spec}: no such file; give file:PATH to a .txt, .jsonl or "
                             ".parquet file")
        try:
            path.open("rb").close()
        except OSError as err:
            raise GraspError(f"{flag} {spec}: cannot read the file ({err.strerror})") from err
        return TextSource(spec, "file", path=path)
    raise GraspError(f"{flag} {spec!r}: unknown source; use one of {', '.join(SCHEMES)}")


def load_text(source: TextSource) -> str:
    """The whole text of a source, with Windows line endings normalised."""
    if source.scheme == "wikitext2":
        text = _load_wikitext2(source.split or "train")
    elif source.scheme == "file":
        text = _load_file(source.path)
    else:
        raise ValueError("model-sampled sources have no text; use sample_from_model")
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise GraspError(f"{source.spec} holds no text")
    return text


def _load_wikitext2(split: str) -> str:
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as err:  # datasets raises many types for "offline"/"not found"
        raise GraspError(
            f"cannot load wikitext-2-raw-v1 ({split}) from the dataset hub: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}; "
            "use file:PATH with a local copy"
        ) from err
    return "".join(ds["text"])


def _load_file(path: Path) -> str:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            texts = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise GraspError(f"{path}:{n}: each JSONL line needs a string 'text' field")
                texts.append(record["text"])
            return "\n\n".join(texts)
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as err:
                raise GraspError(
                    f"{path} is not a readable parquet file ({_first_line(err)})"
                ) from err
            if "text" not in table.column_names:
                raise GraspError(f"{path}: parquet file has no 'text' column "
                                 f"(columns: {', '.join(table.column_names)})")
            return "\n\n".join(t for t in table.column("text").to_pylist() if t)
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise GraspError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise GraspError(f"{path}: invalid JSON on line {err.lineno}: {err.msg}") from err


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of the whole text, as the tokenizer itself encodes it: (n_tokens,)."""
    # Long texts exceed model_max_length on purpose: the caller cuts them into windows.
    saved = getattr(tokenizer, "model_max_length", None)
    tokenizer.model_max_length = int(1e30)
    try:
        ids = tokenizer(text)["input_ids"]
    finally:
        tokenizer.model_max_length = saved
    return torch.tensor(ids, dtype=torch.long)


def cut_blocks(ids: torch.Tensor, seq_len: int, counts: tuple[int, ...], seed: int,
               what: str = "calibration text") -> tuple[torch.Tensor, ...]:
    """Disjoint sets of ``seq_len`` windows, ``counts[k]`` in set k, in a seeded random order."""
    available = ids.numel() // seq_len
    need = sum(counts)
    if available < need:
        raise GraspError(
            f"{what} has {ids.numel():,} tokens: {available} blocks of {seq_len}, but {need} are "
            f"needed ({' + '.join(map(str, counts))}); use fewer --num-samples, a shorter "
            "--seq-len or more text"
        )
    windows = ids[: available * seq_len].view(available, seq_len)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for n in counts:
        out.append(windows[order[start:start + n]].clone())
        start += n
    return tuple(out)


@torch.no_grad()
def sample_from_model(model: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int,
                      batch_size: int = 16, top_p: float = 0.95,
                      progress: bool = True) -> torch.Tensor:
    """Data-free calibration text: (num_samples, seq_len) tokens sampled from the model itself,
    each starting at the BOS token (EOS when there is none), temperature 1, nucleus ``top_p``."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    chunks = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        from tqdm.auto import tqdm

        for first in tqdm(range(0, num_samples, batch_size), desc="sampling", unit="batch",
                          disable=not progress, dynamic_ncols=True):
            n = min(batch_size, num_samples - first)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=device)
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                 temperature=1.0, top_p=top_p, top_k=0,
                                 max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1,
                                 pad_token_id=pad)
            chunks.append(out[:, :seq_len].cpu())
    return torch.cat(chunks)


def describe(source: TextSource, tokens: int | None = None) -> dict[str, Any]:
    desc: dict[str, Any] = {"source": source.spec}
    if source.scheme == "file":
        desc["sha256"] = hashlib.sha256(source.path.read_bytes()).hexdigest()
    if source.scheme == "wikitext2":
        desc["dataset"] = f"wikitext/wikitext-2-raw-v1:{source.split}"
    if tokens is not None:
        desc["tokens"] = tokens
    return desc


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
