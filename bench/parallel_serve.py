"""One checkpoint served at tensor-parallel size 1 and N on vLLM's CPU backend: greedy tokens
and output tok/s.

Each repeat starts the model at TP=1, then at TP=N (ABAB), through the launcher in the
configuration a user runs (compiled, dtype auto; on CPU each rank bound to its own cores).
On every server: a warm-up, one closed-loop locust run per concurrency level, then greedy
completions of the parity prompts (windows of WikiText, ``ignore_eos``) whose token ids are
compared across the TP sizes. Greedy tokens may part where two logits are within rounding of
each other (the all-reduce sums in another order), so ``--parity-dtype float32`` adds one
eager float32 server per TP size for the same comparison without bf16 rounding.

    python -m bench.parallel_serve --model runs/qwen-r30-tp2/ckpt --tp 2 \\
        --out bench/results/tp2-qwen-r30
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import harness
from grasp_deploy.jobs.serve import check_parallel, servable
from grasp_deploy.loadtest.ab import read_records, run_locust, summarize_level
from grasp_deploy.loadtest.config import BenchConfig, make_requests
from grasp_deploy.server.launcher import ServerConfig, VllmServer, free_port
from grasp_deploy.server.net import http_request

WARMUP = 4


def greedy(url: str, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    out = []
    for ids in prompts:
        reply = json.loads(http_request(f"{url}/v1/completions", {
            "model": "m", "prompt": ids, "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True}, timeout=600))
        out.append([int(t.split(":")[1]) for t in reply["choices"][0]["logprobs"]["tokens"]])
    return out


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, Any]:
    """How far each pair of greedy sequences agrees: identical ones, first differing step."""
    first = [next((i for i, (x, y) in enumerate(zip(s, t, strict=True)) if x != y), None)
             for s, t in zip(a, b, strict=True)]
    return {"identical": sum(f is None for f in first), "of": len(first),
            "first_difference": [f for f in first if f is not None]}


def serve_once(args, tp: int, cfg: BenchConfig, work: Path, parity: list[list[int]],
               dtype: str = "auto", load: bool = True) -> dict[str, Any]:
    runs = len(list(work.glob("logs/*.log")))
    server_cfg = ServerConfig(model=args.location, served_name="m", port=free_port(),
                              kv_cache_gb=args.kv_cache_gb, max_model_len=2048, dtype=dtype,
                              enforce_eager=dtype != "auto", tensor_parallel=tp,
                              log_file=work / "logs" / f"{runs + 1}-tp{tp}-{dtype}.log")
    got: dict[str, Any] = {"cpu": server_cfg.cpu_settings(), "levels": {}}
    with VllmServer(server_cfg, say=print) as server:
        if load:
            run_locust(server.url, "m", work / "prompts.json", work / "warm.jsonl", 1, WARMUP,
                       None, None, 600)
            for users in cfg.concurrency:
                recs = work / f"tp{tp}-c{users}.jsonl"
                recs.unlink(missing_ok=True)
                run_locust(server.url, "m", work / "prompts-run.json", recs, users,
                           cfg.requests, None, None, 3600)
                level = summarize_level([{**r, "repeat": 0} for r in read_records(recs)], cfg)
                got["levels"][str(users)] = {k: level[k] for k in (
                    "output_throughput", "median_tpot_ms", "median_ttft_ms", "completed")}
                print(f"  TP={tp} c={users}: {level['output_throughput']:.1f} output tok/s")
        got["greedy"] = greedy(server.url, parity, args.parity_tokens)
    return got


def markdown(res: dict[str, Any]) -> str:
    tp, levels = res["tp"], res["concurrency"]
    lines = [f"# `{res['model']}` at tensor-parallel size 1 and {tp}", "",
             f"vLLM compiled, dtype auto, KV memory {res['kv_cache_gb']} GiB; closed loop, "
             f"{res['requests']} requests per level, input {res['input_len']} / output "
             f"{res['output_len']} tokens; {res['repeats']} repeat(s), TP=1 then TP={tp} in "
             "each (ABAB).", "",
             "CPU settings: " + "; ".join(f"TP={k}: `{v}`" for k, v in res["cpu"].items()), "",
             "| concurrency | TP=1 output tok/s | TP=" + str(tp) + " output tok/s | TP="
             + str(tp) + " / TP=1 | per repeat |", "|---:|---:|---:|---:|---|"]
    for c in levels:
        one, many = (res["tok_s"][k][c] for k in ("1", str(tp)))
        per = "; ".join(f"{a:.1f} -> {b:.1f}" for a, b in res["per_repeat"][c])
        lines.append(f"| {c} | {one:.1f} | {many:.1f} | x{many / one:.3f} | {per} |")
    lines += ["", "Output tok/s is the mean over the repeats.", "",
              "Greedy tokens, TP=1 against TP=" + str(tp) + f" ({res['parity_prompts']} "
              f"prompts of WikiText, {res['parity_tokens']} tokens each):", ""]
    for name, agree in res["parity"].items():
        where = agree["first_difference"]
        lines.append(f"- {name}: {agree['identical']}/{agree['of']} sequences identical"
                     + (f"; the others first differ at step {', '.join(map(str, where))}"
                        if where else ""))
    return "\n".join(lines)


def main() -> None:
    ap = harness.parser(__doc__, None)
    ap.add_argument("--model", required=True, help="checkpoint (or dense model) to serve")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=48)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--parity-prompts", type=int, default=8)
    ap.add_argument("--parity-tokens", type=int, default=32)
    ap.add_argument("--parity-dtype", default=None, help="also compare at this dtype (eager)")
    args = ap.parse_args()
    args.location, _, hf_config = servable(args.model)
    check_parallel(args.model, hf_config, args.tp, 1)
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    levels = tuple(int(c) for c in args.concurrency.split(","))
    cfg = BenchConfig(pruned=args.location, dense=args.location, out=work, concurrency=levels,
                      requests=args.requests, input_len=args.input_len,
                      output_len=args.output_len, vocab_size=int(hf_config.vocab_size),
                      profile=False)
    requests = make_requests(cfg, WARMUP + args.requests)
    (work / "prompts.json").write_text(json.dumps(requests))
    (work / "prompts-run.json").write_text(json.dumps(requests[WARMUP:]))
    text = BenchConfig(pruned=args.location, dense=args.location, out=work, workload="text",
                       prompts=f"file:{harness.WIKI / 'wiki.test.raw'}", input_len="32..96",
                       output_len=args.parity_tokens, tokenizer=args.location)
    parity = [r["prompt"] for r in make_requests(text, args.parity_prompts)]
    sizes = ("1", str(args.tp))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sizes}
    for rep in range(args.repeats):
        for size in sizes:
            print(f"== repeat {rep + 1}/{args.repeats}: TP={size}", flush=True)
            runs[size].append(serve_once(args, int(size), cfg, work, parity))
    tok = {k: {str(c): sum(r["levels"][str(c)]["output_throughput"] for r in runs[k])
               / len(runs[k]) for c in levels} for k in sizes}
    res: dict[str, Any] = {
        "model": args.model, "tp": args.tp, "concurrency": [str(c) for c in levels],
        "requests": args.requests, "input_len": args.input_len, "output_len": args.output_len,
        "kv_cache_gb": args.kv_cache_gb, "repeats": args.repeats, "tok_s": tok,
        "per_repeat": {str(c): [(a["levels"][str(c)]["output_throughput"],
                                 b["levels"][str(c)]["output_throughput"])
                                for a, b in zip(*runs.values(), strict=True)] for c in levels},
        "cpu": {k: runs[k][0]["cpu"] for k in sizes}, "runs": runs,
        "parity_prompts": args.parity_prompts, "parity_tokens": args.parity_tokens,
        "parity": {"dtype auto (compiled)": agreement(runs["1"][0]["greedy"],
                                                      runs[sizes[1]][0]["greedy"])}}
    if args.parity_dtype:
        exact = [serve_once(args, int(k), cfg, work, parity, args.parity_dtype, load=False)
                 for k in sizes]
        res["parity"][f"{args.parity_dtype} (eager)"] = agreement(exact[0]["greedy"],
                                                                  exact[1]["greedy"])
    for bulky in ("prompts.json", "prompts-run.json", "warm.jsonl", *(
            p.name for p in work.glob("tp*-c*.jsonl"))):
        (work / bulky).unlink(missing_ok=True)
    print(harness.write(work, "parallel_serve", res, markdown(res), args.note).read_text())


if __name__ == "__main__":
    main()
