"""The quality table's columns, ratios, calibration recipe and GRASPrune variants."""

from __future__ import annotations

from bench.harness import RESULTS, ROOT

CELLS = RESULTS / "quality-cells"
WORK = ROOT / "runs" / "quality"
RATIOS = (0.2, 0.3, 0.4, 0.5)

# The CPU calibration recipe every calibrated method shares (the paper's is 512 x 512 tokens and
# 4 epochs: about 3.5 hours per GRASPrune run on this 2-core CPU).
CALIB = dict(num_samples=128, seq_len=256)
GRASP_CPU = ["--epochs", "1", "--scale-samples", "32"]
PAPER = ["--recipe", "paper", *GRASP_CPU]
BEST = ["--recipe", "best", *GRASP_CPU]

# column -> extra prune arguments (besides --prune-ratio, calibration and the output)
METHODS: dict[str, list[str]] = {
    "magnitude": ["--method", "magnitude"],
    "wanda-sp": ["--method", "wanda-sp"],
    "flap": ["--method", "flap"],
    "taylor": ["--method", "taylor"],
    "gisp": ["--method", "gisp"],
    "grasp-paper": ["--method", "grasp", *PAPER],
    "grasp-best": ["--method", "grasp", *BEST],
    "grasp-best-self": ["--method", "grasp", *BEST, "--calib", "self"],
    # second edition (issue 22): what landed since the first
    # measured before the sink skip became a setting (its default is 1 now)
    "structprune": ["--method", "structprune", "--sink-skip", "0"],
    "wanda-sp+rec": ["--method", "wanda-sp", "--reconstruct"],
    "flap+rec": ["--method", "flap", "--reconstruct"],
    "grasp-best+rec": ["--method", "grasp", *BEST, "--reconstruct"],
    "grasp-best-kv0.5": ["--method", "grasp", *BEST, "--kv-ratio", "0.5"],
    "grasp-best+reselect": ["--method", "grasp", *BEST, "--reconstruct", "--reselect"],
}
# What `grasp-deploy eval --tasks` said here (2026-11-24), in the report instead of accuracies.
ZERO_SHOT = ("not measured on this machine. `grasp-deploy eval smollm2-135m --tasks "
             "arc_easy,hellaswag --limit 2` stops with `error: --tasks arc_easy,hellaswag: a "
             "task's dataset could not be fetched (ConnectionError: Couldn't reach "
             "'allenai/ai2_arc' on the Hub (LocalEntryNotFoundError)); zero-shot tasks need the "
             "Hugging Face dataset hub, or its cache from a machine that has it`: lm-eval's tasks "
             "load their data from the dataset hub, which only package registries can reach "
             "from here. Where the hub is reachable, `grasp-deploy eval CKPT --tasks "
             "arc_easy,hellaswag,piqa,winogrande` measures them for any exported checkpoint.")
# The GRASPrune columns (ours); the standings compare the best of them with the others.
OURS = ("grasp-best", "grasp-best+rec", "grasp-best+reselect", "grasp-paper")
# GRASPrune variants, each one switch away from the paper's method, on a smaller recipe
# (64 x 256 tokens, 1 epoch, stage A only) so that the whole set runs in well under an hour.
SMALL = ["--num-samples", "64", "--epochs", "1", "--scale-epochs", "0"]
# In report order: the paper, one switch at a time, then the combinations.
ABLATION: dict[str, list[str]] = {
    "paper": ["--recipe", "paper", *SMALL],
    "paper+rank-ties": ["--recipe", "paper", *SMALL, "--tie-break", "rank"],
    "paper+cost-projection": ["--recipe", "paper", *SMALL, "--projection", "cost"],
    "paper+kd": ["--recipe", "paper", *SMALL, "--loss", "kd"],
    "paper+ce+kd": ["--recipe", "paper", *SMALL, "--loss", "ce+kd"],
    "paper+taylor-init": ["--recipe", "paper", *SMALL, "--init", "taylor"],
    "paper+taylor-init+rank-ties+ce+kd": ["--recipe", "paper", *SMALL, "--init", "taylor",
                                          "--tie-break", "rank", "--loss", "ce+kd"],
    "best": ["--recipe", "best", *SMALL],
}



def cell_name(column: str, ratio: float | None) -> str:
    return column if ratio is None else f"{column}-r{ratio:g}"
