"""Screen: StructPrune's pass 2 (and so `prune --reselect`) with the first positions of every
calibration block left out of its least squares, then the real CLI.

The first position of a block is an attention sink on the default model: its activations are
far larger than the rest, so it weighs on the Gram matrices (and on the ridge, a fraction of
their mean diagonal) out of all proportion to one token in 256. This runs any `grasp-deploy`
command with pass 2's Gram matrices and column sums taken over positions SKIP.. only; the
evaluation is the ordinary one. It is a screen, not an option: what it measures decides
whether the change is made in `methods/structprune.py` (and the table re-run). Usage:

    SKIP=1 OMP_NUM_THREADS=1 python -m bench.sink_screen prune smollm2-135m --prune-ratio 0.4 \
        --calib file:../shared/data/wikitext-2/wiki.valid.tokens --num-samples 128 --seq-len 256 \
        --align 1 --method structprune --out runs/sink/structprune-r0.4/plan
    python -m bench.sink_screen export smollm2-135m runs/sink/structprune-r0.4/plan \
        --out runs/sink/structprune-r0.4/ckpt --dtype float32
    python -m bench.sink_screen eval runs/sink/structprune-r0.4/ckpt \
        --data file:../shared/data/wikitext-2/wiki.test.raw --json --dtype float32
"""

from __future__ import annotations

import os
import sys

from grasp_deploy.methods import structprune


def patch(skip: int) -> None:
    """Make pass 2's Gram matrices and sums ignore the first ``skip`` positions of each block
    (its activations are (batch, seq, width))."""
    gram, sums = structprune._gram, structprune._sums
    structprune._gram = lambda parts: gram([p[:, skip:] for p in parts])
    structprune._sums = lambda parts: sums([p[:, skip:] for p in parts])


if __name__ == "__main__":
    from grasp_deploy.cli import main

    patch(int(os.environ.get("SKIP", "1")))
    sys.exit(main(sys.argv[1:]))
