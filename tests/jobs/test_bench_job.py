"""bench's checks before any server starts."""

from grasp_deploy.jobs.bench import resolve
from grasp_deploy.loadtest.config import BenchConfig


def test_two_pruned_checkpoints_compare_with_each_sides_own_widths(checkpoints, tmp_path):
    # The "dense" side may itself be a pruned checkpoint (one plan against another): its config
    # has per-layer widths and no single intermediate_size to read.
    dense, pruned = checkpoints
    both = resolve(BenchConfig(pruned=str(pruned), dense=str(pruned), out=tmp_path / "ab"))
    against_dense = resolve(BenchConfig(pruned=str(pruned), dense=str(dense), out=tmp_path / "b"))
    widths = both.labels["FFN widths"]
    assert widths["dense"] == widths["pruned"] == "64..192, gcd 1" and widths["gcd"] == 1
    assert against_dense.labels["FFN widths"]["dense"] == "192 (all layers)"
