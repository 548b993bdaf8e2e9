"""prune-and-serve: prune -> export -> (A/B bench) -> serve, reusing outputs whose inputs match.

WORK/
  inputs.json   what the plan and checkpoint were made from (the reuse key)
  plan/         grasp-deploy prune output
  ckpt/         grasp-deploy export output
  healed/       grasp-deploy heal output (with --heal-minutes / --heal-steps)
  ckpt-SCHEME/  the served checkpoint quantized (with --quantize)
  derived.json  what healed/ and ckpt-SCHEME/ were made with (their reuse key)
  bench/        grasp-deploy bench output (with --bench)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import format as fmt
from ..checkpoint.quant import check_scheme
from ..core.checks import check_number
from ..core.errors import GraspError
from ..core.plan import PLAN_FILE, load_plan
from ..loadtest.ab import run_ab
from ..loadtest.config import BenchConfig
from ..server.launcher import ServerConfig, VllmServer, require_vllm
from ..server.net import check_bindable
from ..sources import models
from ..sources.known import DEFAULT_MODEL
from . import bench, loading, serve
from .export import ExportConfig, run_checkpoint_export, run_export
from .heal import HealConfig, run_heal
from .heal import warning as heal_warning
from .prune import PruneConfig, PruneResult, run_prune
from .prune_config import post_step_of

INPUTS = "inputs.json"
DERIVED = "derived.json"
SAMPLE_PROMPT = "The capital of France is"
SAMPLE_CHAT = "What is the capital of France?"


@dataclass(frozen=True)
class PipelineConfig:
    prune: PruneConfig  # its ``out`` is replaced by WORK/plan
    server: ServerConfig  # its ``model`` is replaced by the checkpoint
    work: Path | None = None  # default: runs/<model>-<method>-r<R>-<key>
    bench: BenchConfig | None = None  # its ``pruned`` and ``out`` come from WORK
    once: bool = False  # serve, complete one prompt, stop
    heal_minutes: float | None = None  # heal the checkpoint (jobs.heal) for this long
    heal_steps: int | None = None  # or this many steps (both: whichever comes first)
    heal_data: str | None = None  # default: the calibration text ("self": data-free)
    quantize: str | None = None  # then quantize it (checkpoint.quant.SCHEMES)

    def __post_init__(self) -> None:
        if self.quantize is not None:
            check_scheme(self.quantize)
        if self.prune.quantize != self.quantize:  # the plan is pruned for what it is served as
            object.__setattr__(self, "prune", replace(self.prune, quantize=self.quantize))
        if self.heal_minutes is not None:
            check_number("--heal-minutes", self.heal_minutes, low=0, low_open=True)
        if self.heal_steps is not None:
            check_number("--heal-steps", self.heal_steps, low=1, integer=True)

    @property
    def healing(self) -> bool:
        return self.heal_minutes is not None or self.heal_steps is not None


@dataclass(frozen=True)
class PipelineHooks:
    """What the caller shows at each step (the CLI prints; tests may record)."""

    say: Callable[[str], None]
    on_prune: Callable[[PruneResult], None]
    on_checkpoint: Callable[[Path], None]
    on_bench: Callable[[dict[str, Any], Path], None]
    on_ready: Callable[[VllmServer], None]
    on_sample: Callable[[str, str], None]


def prune_inputs(config: PruneConfig) -> dict[str, Any]:
    """The fields that decide the plan (not where it goes or how it is displayed)."""
    data = {f.name: getattr(config, f.name) for f in fields(config)
            if f.name not in ("out", "force", "progress", "checkpoint_every", "quantize")}
    if config.width_multiple > 1:  # what the quantization target changes of the plan
        data["width_multiple"] = config.width_multiple
    data["model"] = config.model or DEFAULT_MODEL
    data["method_settings"] = asdict(config.settings)
    data["post_steps"] = [{"step": post_step_of(s).name, **asdict(s)} for s in config.post_steps]
    return json.loads(json.dumps(data, default=str))


def default_work_dir(config: PruneConfig, root: Path = Path("runs")) -> Path:
    inputs = prune_inputs(config)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]
    name = re.sub(r"[^\w.-]+", "-", Path(str(inputs["model"]).rstrip("/")).name)
    return root / f"{name}-{config.method}-r{config.prune_ratio:g}-{key}"


def prepare_checkpoint(
    config: PruneConfig, work: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Plan and checkpoint under ``work``, made anew only when the inputs changed: the same
    settings and a model whose weights still have the plan's fingerprint."""
    _check_work_dir(work)
    with _removed_if_left_empty(work):
        return _prepare(config, work, say)


def _check_work_dir(work: Path) -> None:
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise GraspError(f"--work {work} is not a directory; choose another path")
    if work.is_dir() and any(work.iterdir()) and not (work / INPUTS).is_file() \
            and not (work / "plan").exists():
        raise GraspError(f"--work {work} is a directory prune-and-serve did not write (no "
                         f"{INPUTS}); choose a new or empty directory")


@contextmanager
def _removed_if_left_empty(work: Path) -> Iterator[None]:
    """A failed run leaves no empty directories of its own making behind."""
    made = [d for d in (work, *work.parents) if not d.exists()]
    try:
        yield
    except BaseException:
        for d in made:  # innermost first
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def _same_weights(config: PruneConfig, plan_dir: Path) -> bool:
    """Does the model still have the weights the plan was made from? (Its path may be the
    same while its files changed.)"""
    source = models.resolve_source(config.model)
    model = loading.load_model(source, dtype=torch.float32, device="cpu")
    return models.fingerprint(model) == load_plan(plan_dir).source.fingerprint


def _prepare(config: PruneConfig, work: Path, say: Callable[[str], None]) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    inputs = prune_inputs(config)
    recorded = json.loads((work / INPUTS).read_text()) if (work / INPUTS).is_file() else None
    same = recorded == inputs
    plan_dir, ckpt = work / "plan", work / "ckpt"
    out: dict[str, Any] = {"work": str(work), "plan": str(plan_dir), "checkpoint": str(ckpt)}
    if same and (plan_dir / PLAN_FILE).is_file() and not _same_weights(config, plan_dir):
        say(f"the model's weights changed since {plan_dir} was made; pruning again")
        same = False
    if same and (plan_dir / PLAN_FILE).is_file():
        say(f"reusing the plan in {plan_dir} (same model weights and settings)")
        out["pruned"] = False
    else:
        if not same:
            (work / INPUTS).unlink(missing_ok=True)
        result = run_prune(replace(config, out=plan_dir, force=True))
        out["pruned"], out["prune_result"] = True, result
    if out["pruned"] is False and (ckpt / fmt.MANIFEST).is_file():
        say(f"reusing the checkpoint in {ckpt}")
        out["exported"] = False
    else:
        run_export(ExportConfig(plan_dir=plan_dir, out=ckpt, model=config.model, force=True))
        out["exported"] = True
    (work / INPUTS).write_text(json.dumps(inputs, indent=2) + "\n")
    return out


def gptq_settings(config: PipelineConfig) -> dict[str, Any] | None:
    """w4a16's GPTQ calibration: the prune's own text, at most export's default 128 blocks of
    256 tokens (GPTQ measured better than rounding to nearest on both models tried); None
    (nearest) for int8 and for a data-free prune (``--calib self``), which has no text."""
    prune = config.prune
    if config.quantize != "w4a16" or prune.calib == "self":
        return None
    return {"calib": prune.calib,
            "num_samples": min(prune.num_samples, ExportConfig.num_samples),
            "seq_len": min(prune.seq_len, ExportConfig.seq_len)}


def derive(config: PipelineConfig, ckpt: Path, fresh: bool, say: Callable[[str], None]) -> Path:
    """The checkpoint to serve: ``ckpt``, healed and/or quantized as asked, each step made anew
    when its settings or what it starts from changed, reused otherwise."""
    work = ckpt.parent
    recorded = json.loads((work / DERIVED).read_text()) if (work / DERIVED).is_file() else {}
    wanted: dict[str, Any] = {}
    if config.healing:
        data = config.heal_data or config.prune.calib
        wanted["heal"] = {"minutes": config.heal_minutes, "steps": config.heal_steps,
                          "data": data}
        healed = work / "healed"
        if not fresh and recorded.get("heal") == wanted["heal"] \
                and (healed / fmt.MANIFEST).is_file():
            say(f"reusing the healed checkpoint in {healed}")
        else:
            (work / DERIVED).unlink(missing_ok=True)
            result = run_heal(HealConfig(
                checkpoint=ckpt, out=healed, data=data, steps=config.heal_steps,
                max_minutes=config.heal_minutes, force=True,
                progress=config.prune.progress), say=say)
            kl = result.record["held_out_kl"]
            say(f"healed: held-out KL to the dense model {kl['before']:.4f} -> "
                f"{kl['after']:.4f} in {result.record['seconds'] / 60:.1f} min")
            if (line := heal_warning(result.record)) is not None:
                say(line)
            fresh = True
        ckpt = healed
    if config.quantize:
        wanted["quantize"] = config.quantize
        wanted["gptq"] = gptq = gptq_settings(config)
        quantized = work / f"ckpt-{config.quantize}"
        same = all(recorded.get(k) == wanted.get(k) for k in ("quantize", "gptq", "heal"))
        if not fresh and same and (quantized / fmt.MANIFEST).is_file():
            say(f"reusing the quantized checkpoint in {quantized}")
        else:
            (work / DERIVED).unlink(missing_ok=True)
            if gptq:
                say(f"w4a16: rounding by GPTQ on {gptq['num_samples']} blocks of "
                    f"{gptq['seq_len']} tokens of {gptq['calib']} (the --calib text)")
            run_checkpoint_export(ExportConfig(plan_dir=ckpt, out=quantized,
                                               quantize=config.quantize, force=True,
                                               progress=config.prune.progress, **(gptq or {})))
        ckpt = quantized
    (work / DERIVED).write_text(json.dumps(wanted, indent=2) + "\n")
    return ckpt


def run_prune_and_serve(config: PipelineConfig, hooks: PipelineHooks) -> int:
    """The whole chain; returns the serve exit code (0 after Ctrl-C or ``once``)."""
    require_vllm()
    check_bindable(config.server.host, config.server.port)
    if config.bench is not None and config.bench.prompts:  # before the prune, not after
        bench.check_prompts(config.bench.prompts)
    work = config.work or default_work_dir(config.prune)
    made = prepare_checkpoint(config.prune, work, hooks.say)
    if made.get("prune_result") is not None:
        hooks.on_prune(made["prune_result"])
    ckpt = derive(config, Path(made["checkpoint"]), made["exported"], hooks.say)
    hooks.on_checkpoint(ckpt)
    if config.bench is not None:
        out = work / "bench"
        results = run_ab(bench.resolve(replace(config.bench, pruned=str(ckpt), out=out)),
                         say=hooks.say)
        hooks.on_bench(results, out)
    server_config = serve.resolve(replace(config.server, model=str(ckpt)))

    def ready(server: VllmServer) -> None:
        hooks.on_ready(server)
        if config.once:
            hooks.on_sample(SAMPLE_PROMPT, server.complete(SAMPLE_PROMPT))
            if has_chat_template(ckpt):
                hooks.on_sample(f"chat: {SAMPLE_CHAT}", server.chat(SAMPLE_CHAT))
            raise KeyboardInterrupt  # --once: stop cleanly now

    return serve.run_serve(server_config, ready, say=hooks.say)


def has_chat_template(directory: Path) -> bool:
    """Does the tokenizer saved in ``directory`` carry a chat template?"""
    if (directory / "chat_template.jinja").is_file():
        return True
    config = directory / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
