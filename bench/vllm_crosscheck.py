"""Independent cross-check: our locust measurement vs vLLM's own serving benchmark
(``vllm.benchmarks.serve``) against the same server, on the same requests.

The requests are the product's (``loadtest.config.make_requests``: by default windows of real
text with drawn lengths); vLLM's benchmark gets the same ones as its custom dataset
(``loadtest.workload.vllm_dataset``: the prompt text, re-tokenized by vLLM, and each request's
output tokens, no chat template). For each model (dense, pruned): one server through the
launcher in the configuration a user runs (compiled, dtype auto, the launcher's CPU settings),
a warm-up, then ours (closed loop), then vLLM's (``--max-concurrency``, ``--ignore-eos``), and
the output throughput, median TTFT and median TPOT of both.

    python -m bench.vllm_crosscheck --pruned runs/smollm2-r50-quick/ckpt \\
        --prompts file:../shared/data/wikitext-2/wiki.test.raw --input-len 64..256 \\
        --output-len 32..128 --concurrency 8 --requests 64 \\
        --out bench/results/vllm-crosscheck-smollm2-r50-text
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import harness
from grasp_deploy.jobs.bench import resolve
from grasp_deploy.loadtest.ab import read_records, run_locust, server_config, summarize_level
from grasp_deploy.loadtest.config import BenchConfig, make_requests
from grasp_deploy.loadtest.workload import vllm_dataset
from grasp_deploy.server.launcher import VllmServer
from grasp_deploy.sources.models import load_tokenizer, resolve_source

VLLM_BENCH = ("import sys\n"
              "from vllm.benchmarks.serve import add_cli_args, main\n"
              "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n")
KEYS = ("output_throughput", "median_ttft_ms", "median_tpot_ms", "request_throughput")
WARMUP = 4


def vllm_bench(url: str, name: str, tokenizer: str, dataset: Path, concurrency: int, n: int,
               out_dir: Path) -> tuple[dict, list[str]]:
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model",
            name, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path",
            str(dataset), "--skip-chat-template", "--num-prompts", str(n), "--max-concurrency",
            str(concurrency), "--ignore-eos", "--seed", "0", "--save-result", "--result-dir",
            str(out_dir), "--result-filename", f"{name}.json"]
    proc = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"vllm bench failed:\n{proc.stderr[-3000:]}")
    return json.loads((out_dir / f"{name}.json").read_text()), args


def measure(cfg: BenchConfig, work: Path) -> tuple[dict, list[str]]:
    """Per model: ours, then vLLM's benchmark, on one server and the same requests."""
    requests = make_requests(cfg, WARMUP + cfg.requests)
    prompts, run_prompts = work / "prompts.json", work / "prompts-run.json"
    prompts.write_text(json.dumps(requests))
    run_prompts.write_text(json.dumps(requests[WARMUP:]))
    tokenizer = load_tokenizer(resolve_source(cfg.dense))
    dataset = vllm_dataset(requests[WARMUP:], lambda ids: tokenizer.decode(ids), work / "d.jsonl")
    rows, vllm_cmd = {}, []
    for label in ("dense", "pruned"):
        with VllmServer(server_config(cfg, label, label), say=print) as server:
            run_locust(server.url, label, prompts, work / "warm.jsonl", 1, WARMUP, None, None,
                       600)
            recs = work / f"{label}.jsonl"
            run_locust(server.url, label, run_prompts, recs, cfg.concurrency[0], cfg.requests,
                       None, None, 3600)
            ours = summarize_level([{**r, "repeat": 0} for r in read_records(recs)], cfg)
            theirs, vllm_cmd = vllm_bench(server.url, label, cfg.dense, dataset,
                                          cfg.concurrency[0], cfg.requests, work)
        rows[label] = {"ours": {k: ours[k] for k in KEYS}, "vllm": {k: theirs.get(k) for k in KEYS},
                       "diff": {k: (ours[k] - theirs[k]) / theirs[k] for k in KEYS
                                if theirs.get(k)},
                       "input_tokens": {"ours": ours.get("total_input_tokens"),
                                        "vllm": theirs.get("total_input")}}
    return rows, vllm_cmd


def main() -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--pruned", required=True)
    ap.add_argument("--dense", default="smollm2-135m")
    ap.add_argument("--prompts", default=f"file:{harness.WIKI / 'wiki.test.raw'}")
    ap.add_argument("--input-len", default="64..256")
    ap.add_argument("--output-len", default="32..128")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = resolve(BenchConfig(pruned=args.pruned, dense=args.dense, out=args.out,
                              concurrency=(args.concurrency,), requests=args.requests,
                              input_len=args.input_len, output_len=args.output_len,
                              workload="text", prompts=args.prompts, kv_cache_gb=args.kv_cache_gb,
                              max_model_len=2048, profile=False))
    rows, vllm_cmd = measure(cfg, args.out)
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "server_settings": server_config(cfg, "dense", "dense").cpu_settings(),
              "vllm_bench_args": vllm_cmd}
    md = ["# Our locust timing vs vLLM's `bench serve`, same servers, same requests", "",
          f"Closed loop, concurrency {args.concurrency}, {args.requests} requests cut from "
          f"`{args.prompts}`, input {args.input_len} / output {args.output_len} tokens "
          f"(ignore_eos), {args.kv_cache_gb} GiB KV, vLLM compiled, dtype auto, CPU settings: "
          f"{result['server_settings']}. Ours first, then vLLM's `vllm.benchmarks.serve` "
          "(custom dataset of the same requests as text), each after a warm-up, on the same "
          "server.", "",
          "| model | metric | ours | vLLM bench | difference |", "|---|---|---:|---:|---:|"]
    for label, row in rows.items():
        for k in KEYS:
            md.append(f"| {label} | {k} | {row['ours'][k]:.2f} | {row['vllm'][k]:.2f} | "
                      f"{row['diff'].get(k, float('nan')):+.1%} |")
    md += ["", "Prompt tokens sent (ours: the ids; vLLM: its tokenization of the decoded text): "
           + "; ".join(f"{label} {row['input_tokens']['ours']} vs {row['input_tokens']['vllm']}"
                       for label, row in rows.items())]
    for bulky in ("prompts.json", "prompts-run.json", "warm.jsonl"):
        (args.out / bulky).unlink(missing_ok=True)
    print(harness.write(args.out, "vllm_crosscheck", result, "\n".join(md), args.note)
          .read_text())


if __name__ == "__main__":
    main()
