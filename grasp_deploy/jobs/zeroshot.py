"""Zero-shot accuracy through lm-evaluation-harness, for ``grasp-deploy eval --tasks``.

The model is loaded the way every other command loads it (dense, exported checkpoint, or dense
with a plan applied as masks and scales) and handed to lm-eval's ``HFLM`` as an instance, so a
per-layer-width checkpoint needs no loader of lm-eval's own. The tasks' datasets come from the
Hugging Face dataset hub; where it is unreachable the command stops with one line saying so.
lm-eval is optional: ``pip install 'grasp-deploy[zeroshot]'``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.dtypes import dtype_name
from ..core.errors import GraspError
from ..core.masking import multiplied
from ..core.plan import load_plan
from ..sources import models
from ..sources.device import resolve_device, resolve_dtype
from . import loading

INSTALL_HINT = "pip install 'grasp-deploy[zeroshot]'"


@dataclass(frozen=True)
class TasksConfig:
    model: str | None
    tasks: tuple[str, ...]
    plan: Path | None = None
    limit: int | None = None  # examples per task (quick checks)
    num_fewshot: int = 0
    include_path: Path | None = None  # a folder of the user's own task YAML files
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "auto"
    verify: bool = True  # a pruned checkpoint's files against its manifest (--no-verify: off)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise GraspError(
                "--tasks is empty; name at least one lm-eval task, e.g. --tasks hellaswag"
            )
        if self.limit is not None and self.limit < 1:
            raise GraspError(f"--limit {self.limit} must be at least 1")
        if self.num_fewshot < 0:
            raise GraspError(f"--num-fewshot {self.num_fewshot} must be 0 or more")
        if self.batch_size < 1:
            raise GraspError(f"--batch-size {self.batch_size} must be at least 1")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise GraspError(f"--include-path {self.include_path} is not a folder; give the folder "
                             "that holds your task YAML files")


@dataclass(frozen=True)
class TasksResult:
    model: str
    plan: str | None
    tasks: dict[str, dict[str, float]]  # task -> metric ("acc", "acc_norm", ...) -> value
    limit: int | None
    num_fewshot: int
    dtype: str
    seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_tasks(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise GraspError(f"--tasks needs lm-evaluation-harness, which is not installed "
                         f"({err.name or err}); install it: {INSTALL_HINT}") from None
    # Its warnings about being handed a model instance are what this module means to do.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    return lm_eval, HFLM, TaskManager


def check_tasks(tasks: tuple[str, ...], known: list[str]) -> None:
    names = set(known)
    for task in tasks:
        if task not in names:
            near = difflib.get_close_matches(task, known, n=3)
            hint = (
                f"did you mean {', '.join(near)}?" if near else "list them with `lm-eval ls tasks`"
            )
            raise GraspError(f"--tasks: {task!r} is not an lm-eval task; {hint}")


def _hub_unreachable(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is a failed download, not a bug."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError, FileNotFoundError)):
            return True
        if type(seen).__module__.startswith(("requests", "urllib3", "huggingface_hub", "httpx")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _task_manager(TaskManager, config: TasksConfig):
    """lm-eval's task index; only the user's folder when it holds every task asked for
    (indexing lm-eval's own thousands of task files takes tens of seconds)."""
    if config.include_path is not None:
        own = TaskManager(include_path=str(config.include_path), include_defaults=False)
        if set(config.tasks) <= set(own.all_tasks):
            return own
    return TaskManager(include_path=str(config.include_path) if config.include_path else None)


def run_tasks(config: TasksConfig) -> TasksResult:
    lm_eval, HFLM, TaskManager = _lm_eval()
    plan = load_plan(config.plan) if config.plan is not None else None
    manager = _task_manager(TaskManager, config)
    check_tasks(config.tasks, list(manager.all_tasks))
    source = models.resolve_source(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if plan is not None:
        loading.check_plan_shape(plan, loading.load_config(source), source.spec)
    tokenizer = models.load_tokenizer(source)
    model = loading.load_model(source, dtype=dtype, device=device, verify=config.verify)
    masks = contextlib.nullcontext()
    if plan is not None:
        loading.check_plan_matches(plan, model, source.spec)
        masks = multiplied(model, plan.source.shape, plan.multipliers())
    t0 = time.perf_counter()
    with masks:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size,
                  device=str(device))
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=list(config.tasks),
                                          num_fewshot=config.num_fewshot, limit=config.limit,
                                          task_manager=manager)
        except Exception as err:  # noqa: BLE001 - sorted into "hub unreachable" or re-raised
            if _hub_unreachable(err):
                raise GraspError(
                    f"--tasks {','.join(config.tasks)}: a task's dataset could not be "
                    f"fetched ({type(err).__name__}: {str(err).splitlines()[0][:160]}); "
                    "zero-shot tasks need the Hugging Face dataset hub, or its cache "
                    "from a machine that has it"
                ) from None
            raise
    metrics = {task: {name.split(",")[0]: float(value) for name, value in values.items()
                      if isinstance(value, (int, float)) and not isinstance(value, bool)
                      and not name.startswith(("alias", "sample"))}
               for task, values in out["results"].items()}
    return TasksResult(model=source.spec, plan=str(config.plan) if config.plan else None,
                       tasks=metrics, limit=config.limit, num_fewshot=config.num_fewshot,
                       dtype=dtype_name(dtype), seconds=time.perf_counter() - t0,
                       versions={"lm_eval": getattr(lm_eval, "__version__", "unknown")})
