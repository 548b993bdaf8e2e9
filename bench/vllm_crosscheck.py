"""Independent cross-check: our locust measurement vs vLLM's own serving benchmark
(``vllm.benchmarks.serve``) against the same server, on the same requests.

The requests are the product's (``loadtest.config.make_requests``: by default windows of real
text with drawn lengths); vLLM's benchmark gets the same ones as its custom dataset
(``loadtest.workload.vllm_dataset``: the prompt text, re-tokenized by vLLM, and each request's
output tokens, no chat template). For each model (dense, pruned): one server through the
launcher in the configuration a user runs (compiled, dtype auto, the launcher's CPU settings),
a warm-up, then ours (closed loop), vLLM's (``--max-concurrency``, ``--ignore-eos``), vLLM's
again and ours again (ABBA), and the output throughput, median TTFT and median TPOT of both.

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
TOKENS = ("total_input_tokens", "total_output_tokens")
WARMUP = 4


def vllm_bench(url: str, run: str, name: str, tokenizer: str, dataset: Path, concurrency: int,
               n: int, out_dir: Path) -> tuple[dict, list[str]]:
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model",
            name, "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path",
            str(dataset), "--skip-chat-template", "--custom-output-len", "-1",
            "--disable-shuffle", "--num-prompts", str(n), "--max-concurrency",
            str(concurrency), "--ignore-eos", "--seed", "0", "--save-result", "--result-dir",
            str(out_dir), "--result-filename", f"{run}.json"]
    proc = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"vllm bench failed:\n{proc.stderr[-3000:]}")
    return json.loads((out_dir / f"{run}.json").read_text()), args


def measure(cfg: BenchConfig, work: Path) -> tuple[dict, list[str]]:
    """Per model, on one server and the same requests: ours, vLLM's, vLLM's, ours (ABBA, so
    neither tool always runs on the warmer server); each tool's figure is the mean of its two
    runs, and each run is kept."""
    requests = make_requests(cfg, WARMUP + cfg.requests)
    prompts, run_prompts = work / "prompts.json", work / "prompts-run.json"
    prompts.write_text(json.dumps(requests))
    run_prompts.write_text(json.dumps(requests[WARMUP:]))
    tokenizer = load_tokenizer(resolve_source(cfg.dense))
    dataset = vllm_dataset(requests[WARMUP:], lambda ids: tokenizer.decode(ids), work / "d.jsonl")
    rows, vllm_cmd = {}, []
    for label in ("dense", "pruned"):
        runs: dict[str, list[dict]] = {"ours": [], "vllm": []}
        with VllmServer(server_config(cfg, label, label), say=print) as server:
            run_locust(server.url, label, prompts, work / "warm.jsonl", 1, WARMUP, None, None,
                       600)
            for k, who in enumerate(("ours", "vllm", "vllm", "ours")):
                if who == "ours":
                    recs = work / f"{label}-{k}.jsonl"
                    run_locust(server.url, label, run_prompts, recs, cfg.concurrency[0],
                               cfg.requests, None, None, 3600)
                    runs[who].append(summarize_level(
                        [{**r, "repeat": 0} for r in read_records(recs)], cfg))
                else:
                    theirs, vllm_cmd = vllm_bench(server.url, f"{label}-{k}", label, cfg.dense,
                                                  dataset, cfg.concurrency[0], cfg.requests, work)
                    runs[who].append(theirs)
        mean = {who: {k: sum(r[k] for r in rs) / len(rs) for k in (*KEYS, *TOKENS)}
                for who, rs in runs.items()}
        rows[label] = {**mean, "runs": {who: [{k: r.get(k) for k in (*KEYS, *TOKENS)}
                                              for r in rs] for who, rs in runs.items()},
                       "diff": {k: (mean["ours"][k] - mean["vllm"][k]) / mean["vllm"][k]
                                for k in KEYS if mean["vllm"][k]}}
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
          f"{result['server_settings']}. On one server per model, after a warm-up: ours, "
          "vLLM's `vllm.benchmarks.serve` (custom dataset of the same requests as text), "
          "vLLM's, ours; each tool's figure is the mean of its two runs.", "",
          "| model | metric | ours | vLLM bench | difference |", "|---|---|---:|---:|---:|"]
    for label, row in rows.items():
        for k in KEYS:
            md.append(f"| {label} | {k} | {row['ours'][k]:.2f} | {row['vllm'][k]:.2f} | "
                      f"{row['diff'].get(k, float('nan')):+.1%} |")
    md += ["", "Tokens, ours vs vLLM's (prompt: ours the ids, vLLM its tokenization of the "
           "decoded text; output: each request's own length, `--custom-output-len -1`): "
           + "; ".join(f"{label} prompt {row['ours']['total_input_tokens']:.0f} vs "
                       f"{row['vllm']['total_input_tokens']:.0f}, output "
                       f"{row['ours']['total_output_tokens']:.0f} vs "
                       f"{row['vllm']['total_output_tokens']:.0f}"
                       for label, row in rows.items())]
    if set(rows) == {"dense", "pruned"}:
        md += ["", "| pruned / dense | ours | vLLM bench | difference |", "|---|---:|---:|---:|"]
        for k in KEYS:
            mine, theirs = (rows["pruned"][w][k] / rows["dense"][w][k] for w in ("ours", "vllm"))
            md.append(f"| {k} | {mine:.3f} | {theirs:.3f} | {mine / theirs - 1:+.1%} |")
    md += ["", "Each run's output tok/s (ours; vLLM's), in the order they ran: "
           + "; ".join(f"{label} {row['runs']['ours'][0]['output_throughput']:.1f}, "
                       f"{row['runs']['vllm'][0]['output_throughput']:.1f}, "
                       f"{row['runs']['vllm'][1]['output_throughput']:.1f}, "
                       f"{row['runs']['ours'][1]['output_throughput']:.1f}"
                       for label, row in rows.items())]
    for bulky in ("prompts.json", "prompts-run.json", "warm.jsonl", "d.jsonl"):
        (args.out / bulky).unlink(missing_ok=True)
    print(harness.write(args.out, "vllm_crosscheck", result, "\n".join(md), args.note)
          .read_text())


if __name__ == "__main__":
    main()
