"""Pruning against quantizing, and both, as vLLM serves them: one table and two Pareto plots.

Variants: the dense model and each pruned plan, each in bf16 (served at dtype auto), int8 (W8A8)
and w4a16 (``export --quantize``); with ``--kv-fp8`` the bf16 ones again with an FP8 KV cache.
Per variant: weight bytes (its safetensors tensors, floating-point ones at 2 bytes as served at
dtype auto, quantized ones as stored); KV bytes per token (the server's KV memory over the
tokens it says that memory holds); output tok/s and p50 TPOT / TTFT per concurrency level
(closed loop, seeded random prompts, the same KV memory, vLLM compiled, dtype auto, the
launcher's CPU settings; the variants served one after another, in reverse order on the next
repeat); perplexity as served (prompt logprobs) on the WikiText-2 test and held-out Python code;
with ``--humaneval``, HumanEval pass@1 as served (sandboxed: needs root). With ``--calib`` the
w4a16 weights are chosen by GPTQ on that text, else rounded to nearest.

Each measurement is saved in WORK/state.json as it is made: a stopped run goes on where it
stopped, and ``--stages`` runs a part (build, serve, quality, report).

    python -m bench.quant --model smollm2-135m --pruned r30=runs/q/r30-plan,r50=runs/q/r50-plan \\
        --work runs/quant-smollm2 --out bench/results/quant-smollm2
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import PYTHON_CODE, WIKI
from bench.quant_report import plot, ratios, table
from grasp_deploy.loadtest.ab import run_locust, summarize_level
from grasp_deploy.loadtest.config import BenchConfig, make_requests
from grasp_deploy.server.launcher import ServerConfig, VllmServer
from grasp_deploy.server.net import free_port
from grasp_deploy.sources import models, text
from grasp_deploy.tasks.endpoint import Endpoint
from grasp_deploy.tasks.perplexity import served_perplexity, tokenize

SCHEMES = ("bf16", "int8", "w4a16")
FLOAT_BYTES = 2  # floating-point tensors as served at dtype auto (bf16)
STORED_BYTES = {"I8": 1, "U8": 1, "I32": 4, "I64": 8, "F8_E4M3": 1}


@dataclass(frozen=True)
class Variant:
    label: str  # "dense" or a pruned plan's name
    source: str  # the model spec, or the plan directory
    scheme: str  # one of SCHEMES
    kv_fp8: bool = False

    @property
    def name(self) -> str:
        return f"{self.label}-{self.scheme}" + ("-kvfp8" if self.kv_fp8 else "")

    def location(self, work: Path) -> str:
        """What vLLM opens: the model itself for dense bf16, else the exported directory."""
        if self.label == "dense" and self.scheme == "bf16":
            return models.resolve_source(self.source).location
        return str(work / f"{self.label}-{self.scheme}")


def variants(model: str, pruned: list[tuple[str, str]], schemes: list[str],
             kv_fp8: bool) -> list[Variant]:
    out = [Variant(label, source, s) for label, source in [("dense", model), *pruned]
           for s in schemes]
    return out + ([Variant(v.label, v.source, v.scheme, True) for v in out if v.scheme == "bf16"]
                  if kv_fp8 else [])


def build(v: Variant, work: Path, calib: list[str]) -> None:
    """``export`` the variant once (bf16 weights beside whatever is quantized). With ``calib``
    (``--calib TEXT -n N -l L``) w4a16 is rounded by GPTQ, which quantizes a checkpoint: a
    pruned plan's bf16 export is made first and quantized as it stands."""
    where = Path(v.location(work))
    if v.kv_fp8 or (where / "config.json").is_file():
        return
    gptq = bool(calib) and v.scheme == "w4a16"
    source = v.source
    if gptq and v.label != "dense":
        plain = Variant(v.label, v.source, "bf16")
        build(plain, work, calib)
        source = plain.location(work)
    cmd = [*harness.grasp_deploy(), "export", source, "--out", str(where)]
    if source == v.source:  # a checkpoint is quantized in its own dtype (bf16 here)
        cmd += ["--dtype", "bfloat16"]
    if v.scheme != "bf16":
        cmd += ["--quantize", v.scheme, *(calib if gptq else [])]
    harness.run(cmd + (["--dense"] if v.label == "dense" else []))


def weight_bytes(directory: Path) -> int:
    """Bytes of every tensor in the directory's safetensors files, as served (module doc)."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, t in header.items():
            if name != "__metadata__":
                size = STORED_BYTES.get(t["dtype"], FLOAT_BYTES)
                total += math.prod(t["shape"]) * size
    return total


def server(v: Variant, work: Path, args: Any, log: str, max_len: int) -> ServerConfig:
    return ServerConfig(model=v.location(work), served_name=v.name, port=free_port(),
                        kv_cache_gb=args.kv_cache_gb, max_model_len=max_len,
                        extra_args=("--kv-cache-dtype", "fp8") if v.kv_fp8 else (),
                        log_file=work / "logs" / f"{log}.log")


def serve_round(v: Variant, rep: int, work: Path, args: Any, prompts: list[dict]) -> dict:
    """One variant served once: its KV capacity, then each level's requests (after a discarded
    warm-up); each level has its own prompts, the same for every variant."""
    scratch = work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    part, batch = scratch / "part.jsonl", scratch / "prompts.json"
    out: dict[str, Any] = {"levels": {}}
    with VllmServer(server(v, work, args, f"{v.name}-{rep + 1}", args.max_model_len)) as s:
        out["kv"] = s.kv_capacity()
        first = 0
        for users, count in [(0, args.warmup), *zip(args.concurrency, args.requests,
                                                     strict=True)]:
            part.unlink(missing_ok=True)
            batch.write_text(json.dumps(prompts[first:first + count]))
            first += count
            run_locust(s.url, v.name, batch, part, max(users, 1), count, None, None, 1800.0)
            if users:  # 0: the warm-up
                out["levels"][str(users)] = [
                    {**json.loads(line), "repeat": rep}
                    for line in part.read_text().splitlines() if line.strip()]
    return out


def stage_serve(vs: list[Variant], work: Path, args: Any, state: dict, save: Any) -> None:
    total = args.warmup + sum(args.requests)
    config = BenchConfig(pruned="-", dense=args.model, out=work, input_len=args.input_len,
                         output_len=args.output_len, vocab_size=args.vocab, seed=0,
                         tokenizer=args.model)
    prompts = make_requests(config, total)
    for rep in range(args.repeats):
        for v in (vs if rep % 2 == 0 else vs[::-1]):
            runs = state.setdefault("serve", {}).setdefault(v.name, {})
            if str(rep) not in runs:
                print(f"serving {v.name} (repeat {rep + 1}/{args.repeats})", flush=True)
                runs[str(rep)] = serve_round(v, rep, work, args, prompts)
                save()


def stage_quality(vs: list[Variant], work: Path, args: Any, state: dict, save: Any) -> None:
    """Perplexities (and HumanEval) of each variant from one server of it."""
    texts = {"wikitext": (WIKI / "wiki.test.raw", args.wiki_windows),
             "code": (PYTHON_CODE / "stdlib-m-z.txt", args.code_windows)}
    for v in vs:
        done = state.setdefault("quality", {}).setdefault(v.name, {})
        wanted = [*texts, *(["humaneval"] if args.humaneval else [])]
        if all(k in done for k in wanted):
            continue
        print(f"scoring {v.name}", flush=True)
        with VllmServer(server(v, work, args, f"{v.name}-quality", 2049)) as s:
            endpoint = Endpoint(s.url, v.name)
            for key, (path, windows) in texts.items():
                if key not in done:
                    ids = tokenize(endpoint, text.load_text(text.parse_source(f"file:{path}")))
                    nll, n = served_perplexity(endpoint, ids, 2048, windows, 2)
                    done[key] = {"perplexity": math.exp(nll), "windows": n}
                    save()
            if args.humaneval and "humaneval" not in done:
                _, out = harness.run([*harness.grasp_deploy(), "eval", "--tasks", "humaneval",
                                      "--url", s.url, "--json", "-q"])
                done["humaneval"] = {k: v for k, v in json.loads(
                    out.strip().splitlines()[-1]).items() if k != "rows"}  # not per problem
                save()


def summary(v: Variant, work: Path, state: dict, config: BenchConfig) -> dict[str, Any]:
    """The table's row of one variant, from what the stages saved."""
    runs = state.get("serve", {}).get(v.name, {})
    row: dict[str, Any] = {"variant": v.name, "weight_bytes": weight_bytes(
        Path(v.location(work))), **state.get("quality", {}).get(v.name, {})}
    if runs:
        kv = next(iter(runs.values()))["kv"]
        row["kv_bytes_per_token"] = config.kv_cache_gb * 2**30 / kv["kv_cache_tokens"]
        levels = {level for run in runs.values() for level in run["levels"]}
        row["levels"] = {level: {**summarize_level(
            [r for run in runs.values() for r in run["levels"].get(level, [])], config),
            "repeats": [summarize_level(run["levels"][level], config)["output_throughput"]
                        for run in runs.values() if run["levels"].get(level)]}
            for level in sorted(levels, key=int)}
    return row


def main(argv: list[str] | None = None) -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pruned", default="", help="NAME=PLAN_DIR,... (w4a16: --align 32 plans)")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--kv-fp8", action="store_true", help="also the bf16 variants, FP8 KV cache")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--stages", default="build,serve,quality,report")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", default="16,64,64", help="per level, per repeat")
    for flag, kind, default in (
            ("--warmup", int, 4), ("--repeats", int, 2), ("--input-len", int, 48),
            ("--output-len", int, 64), ("--kv-cache-gb", float, 1.0),
            ("--max-model-len", int, 2048), ("--code-windows", int, 8),
            ("--wiki-windows", int, None)):  # None: the whole WikiText-2 test
        ap.add_argument(flag, type=kind, default=default)
    ap.add_argument("--humaneval", action="store_true")
    ap.add_argument("--calib", help="w4a16 by GPTQ on this text (export --calib); else nearest")
    ap.add_argument("--calib-samples", type=int, default=128, help="GPTQ's 256-token blocks")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.requests = [int(n) for n in args.requests.split(",")]
    args.vocab = len(models.load_tokenizer(models.resolve_source(args.model)))
    pruned = [tuple(x.split("=", 1)) for x in args.pruned.split(",") if x]
    vs = variants(args.model, pruned, args.schemes.split(","), args.kv_fp8)
    stages, state_path = set(args.stages.split(",")), args.work / "state.json"
    args.work.mkdir(parents=True, exist_ok=True)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}

    def save() -> None:  # atomically: a killed run keeps every measurement made before
        state_path.with_suffix(".tmp").write_text(json.dumps(state))
        state_path.with_suffix(".tmp").replace(state_path)

    calib = (["--calib", args.calib, "-n", str(args.calib_samples), "-l", "256"]
             if args.calib else [])
    for v in vs if "build" in stages else []:
        build(v, args.work, calib)
    if "serve" in stages:
        stage_serve(vs, args.work, args, state, save)
    if "quality" in stages:
        harness.require(WIKI, "the shared WikiText-2 files")
        stage_quality(vs, args.work, args, state, save)
    if "report" in stages:
        report(vs, args, state)


def report(vs: list[Variant], args: Any, state: dict) -> None:
    config = BenchConfig(pruned="-", dense=args.model, out=args.work, kv_cache_gb=args.kv_cache_gb)
    rows = [summary(v, args.work, state, config) for v in vs]
    at = 8 if 8 in args.concurrency else args.concurrency[-1]
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "pareto.png", at, f"{args.model}: quality against speed and size")
    body = (f"# Pruning against quantizing, and both: {args.model}\n\n"
            "Output tok/s pooled over the repeats, each repeat's own in brackets.\n\n"
            + table(rows, args.concurrency, at) + "\n\nOutput tok/s against dense bf16:\n\n"
            + ratios(rows, args.concurrency, "dense-bf16") + "\n\n![Pareto](pareto.png)\n")
    harness.write(args.out, "quant", {"rows": rows, "variants": [v.name for v in vs]}, body,
                  args.note)


if __name__ == "__main__":
    main()
