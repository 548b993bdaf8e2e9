"""The one summary each command prints, as text (no library logic here)."""

from __future__ import annotations

from typing import Any

import click

from ..server.cpu import SWITCH as CPU_SWITCH


def kv_budget_text(budget: dict[str, Any]) -> str:
    """The KV budget asked and achieved, from a plan's or manifest's ``budget`` record."""
    kept = budget.get("kv_achieved")
    achieved = "not recorded" if kept is None else f"{kept:.2%} of the dense model's kept"
    asked = budget.get("kv_ratio")
    return (f"KV bytes/token at most {asked:.2%} asked, {achieved}" if asked is not None
            else f"KV bytes/token: no budget asked (--kv-ratio), {achieved}")


def prune_summary(result) -> None:
    plan, b = result.plan, result.plan.budget
    kv = [len(layer.kv_keep) for layer in plan.layers]
    ffn = [len(layer.ffn_keep) for layer in plan.layers]
    dense = plan.source.shape.layers[0]
    lines = [
        f"plan written to {result.plan_dir}/plan.json",
        f"  method          {plan.method} on {plan.source.name}",
        (
            f"  prunable params {b.prunable_dense:,} -> {b.prunable_kept:,}  "
            f"(removed {b.achieved_ratio:.2%}, asked {b.prune_ratio:.2%})"
        ),
        f"  model params    {b.model_dense:,} -> {b.model_pruned:,}  (-{b.model_reduction:.2%})",
        f"  FFN width       {min(ffn)}..{max(ffn)} of {dense.intermediate_size} per layer",
        (
            f"  KV heads        {sum(kv)} of"
            f" {sum(layer.num_key_value_heads for layer in plan.source.shape.layers)} in all"
            f" ({min(kv)}..{max(kv)} per layer)"
        ),
        f"  KV budget       {kv_budget_text(plan.to_json()['budget'])}",
    ]
    for name, log in result.stages.items():
        lines.append(f"  stage {name:<9} {log.steps} steps in {log.seconds:.1f}s, "
                     f"loss {log.first_loss:.3f} -> {log.last_loss:.3f}")
    if plan.reconstruction is not None:
        rec = plan.reconstruction
        what = ("units chosen by ADMM, o_proj and down_proj refitted"
                if "reselect" in plan.settings.get("reconstruct", {})
                else "o_proj and down_proj refitted")
        when = (f"in {result.seconds['reconstruct']:.1f}s" if "reconstruct" in result.seconds
                else "in the method's pass 2")
        lines.append(f"  reconstructed   {what}, {len(plan.layers)} layers {when} "
                     f"({rec['blocks']} blocks, ridge {rec['ridge']:g})")
    lines.append(f"  total time      {result.seconds['total']:.1f}s")
    click.echo("\n".join(lines))


def quantized_line(q: dict[str, Any]) -> str:
    gptq = (f", GPTQ on {q['calibration']['source']}" if q.get("rounding") == "gptq" else "")
    return (f"  quantized    {q['scheme']} ({q['preset']}, {q['format']}{gptq}): "
            f"{q['projections']} projections, {q['weight_bytes'] / 2**20:,.1f} MiB of weights")


def export_summary(result) -> None:
    m = result.manifest
    p, kv = m["parameters"], m.get("kv_cache_bytes_per_token")
    lines = [f"checkpoint written to {result.directory}",
             f"  parameters   {p['dense']:,} -> {p['pruned']:,} (-{p['reduction']:.2%})"]
    if kv:
        lines.append(f"  KV bytes/tok {kv['dense']:,} -> {kv['pruned']:,} ({kv['dtype']}, "
                     f"x{kv['pruned'] / kv['dense']:.3f})")
    lines.append(f"  weights      {', '.join(m['weights'])}")
    if "quantization" in m:
        lines.append(quantized_line(m["quantization"]))
    if result.onnx:
        lines.append(f"  onnx         {result.onnx['file']}; max |logits diff| vs PyTorch "
                     f"{result.onnx['max_abs_logits_diff']:.2e}")
    click.echo("\n".join(lines))


def inspect_report(r: dict[str, Any]) -> None:
    lines = [f"{r['directory']}: {r['architecture']}, {len(r['layers'])} layers"]
    if r.get("quantization"):
        lines.append(quantized_line(r["quantization"]))
    if "source" in r and r.get("method") != "none":
        lines.append(f"  source       {r['source']['model']} ({r['source']['fingerprint']}), "
                     f"method {r['method']}")
        lines.append(f"  parameters   {r['dense_parameters']:,} dense -> {r['parameters']:,} "
                     f"(x{r['parameters'] / r['dense_parameters']:.3f})")
        lines.append(
            f"  KV bytes/tok {r['dense_kv_cache_bytes_per_token']:,} dense -> "
            f"{r['kv_cache_bytes_per_token']:,} "
            f"(x{r['kv_cache_bytes_per_token'] / r['dense_kv_cache_bytes_per_token']:.3f})"
        )
        if r.get("healing"):
            h, kl = r["healing"], r["healing"]["held_out_kl"]
            lines.append(f"  healed       {h['steps']} steps ({h['seconds'] / 60:.1f} min) from "
                         f"{h['teacher']['model']} on {h['data']}; held-out KL "
                         f"{kl['before']:.4f} -> {kl['after']:.4f}")
        b = r["budget"]
        lines.append(f"  budgets      prunable parameters: {b['prune_ratio']:.2%} removal asked, "
                     f"{b['achieved_ratio']:.2%} achieved; {kv_budget_text(b)}")
    else:
        lines.append(f"  parameters   {r['parameters']:,}")
        lines.append(f"  KV bytes/tok {r['kv_cache_bytes_per_token']:,}")
    lines.append("  layer  ffn_width  kv_heads  q_heads")
    for i, layer in enumerate(r["layers"]):
        lines.append(f"  {i:>5}  {layer['intermediate_size']:>9}  "
                     f"{layer['num_key_value_heads']:>8}  {layer['num_attention_heads']:>7}")
    lines.append("  sha256 of every file (code, config, tokenizer, weights) matches "
                 "grasp_manifest.json" if r["verified_sha256"]
                 else "  files NOT verified (a dense model directory, or --no-verify)")
    click.echo("\n".join(lines))


def perplexity_line(result) -> None:
    click.echo(f"perplexity {result.perplexity:.4f} on {result.data}: {result.windows} windows "
               f"x {result.seq_len} tokens ({result.tokens:,}), {result.model}"
               f"{' + plan ' + result.plan if result.plan else ''}, {result.dtype}"
               f"{', served by vLLM' if result.engine == 'vllm' else ''}, {result.seconds:.1f}s")


def tasks_lines(result) -> None:
    shots = f"{result.num_fewshot}-shot" if result.num_fewshot else "zero-shot"
    click.echo(f"{shots} on {result.model}{' + plan ' + result.plan if result.plan else ''}"
               f"{f', first {result.limit} examples per task' if result.limit else ''}, "
               f"{result.dtype}, {result.seconds:.1f}s")
    for task, values in result.tasks.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if not k.endswith("_stderr"))
        click.echo(f"  {task:<20} {shown}")


def banner(server, kv: str, once: bool = False) -> None:
    """What a served endpoint looks like to a user: URL, model, KV cache, how to call it."""
    config = server.config
    # The key itself is never printed: the examples read it from $GRASP_API_KEY.
    auth = " -H \"Authorization: Bearer $GRASP_API_KEY\"" if config.api_key else ""
    key = "os.environ['GRASP_API_KEY']" if config.api_key else "\"none\""
    lines = [
        f"serving {config.name} at {server.url}/v1  (OpenAI-compatible)",
        f"  model     {config.model}",
        f"  {kv}",
        f"  api key   {config.masked_key} (required; set GRASP_API_KEY to it for the lines below)"
        if config.api_key else "  api key   none (anyone who can reach the port may call it)",
        f"  log       {server.log_path}",
        *([f"  workers   {config.tensor_parallel} tensor x {config.pipeline_parallel} pipeline "
             "parallel"] if config.ranks > 1 else []),
        *([f"  cpu       {config.cpu_settings()} ({CPU_SWITCH}=0: vLLM's own)"]
          if config.cpu_settings() else []),
        f"  curl {server.url}/v1/completions -H 'Content-Type: application/json'{auth} "
        f"-d '{{\"model\": \"{config.name}\", \"prompt\": \"The capital of France is\", "
        f"\"max_tokens\": 16}}'",
        f"  python: OpenAI(base_url=\"{server.url}/v1\", api_key={key})"
        f".chat.completions.create(model=\"{config.name}\", messages=[{{\"role\": \"user\", "
        f"\"content\": \"Hi\"}}])",
    ]
    if not once:
        lines.append("  Ctrl-C to stop")
    click.echo("\n".join(lines))


def bench_report(results: dict[str, Any], out) -> None:
    from ..loadtest.report import configuration, print_table

    print_table(results, say=click.echo)
    click.echo(f"measured with {configuration(results)}")
    click.echo(f"report: {out}/results.md  (plots: {', '.join(results.get('plots', []))})")


def soak_report(results: dict[str, Any], out) -> None:
    from ..loadtest.report import configuration

    s, m = results["summary"], results["memory"]
    lines = [f"soak ({results['status']}): {s['completed']} requests ok, {s['failed']} failed in "
             f"{results['wall_seconds']:.0f}s at {results['users']} users, "
             f"{s['output_throughput']:.1f} output tok/s"]
    if "rss_first_mib" in m:
        lines.append(
            f"  server RSS after warm-up {m['rss_first_mib']:.0f} -> {m['rss_last_mib']:.0f} "
            f"MiB (peak {m['rss_peak_mib']:.0f}, trend {m['slope_mib_per_min']:+.2f} MiB/min)"
        )
    lines.append(f"measured with {configuration(results)}")
    lines.append(f"report: {out}/soak.md  (plot: {out}/memory.png)")
    click.echo("\n".join(lines))
