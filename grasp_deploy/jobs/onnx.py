"""ONNX export of a written checkpoint: logits for (input_ids, attention_mask), checked with
onnxruntime against the PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import GraspError

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits


def export_onnx(checkpoint: Path, seq_len: int = 16, seed: int = 0) -> dict[str, Any]:
    """Write ``checkpoint/onnx/model.onnx`` (+ external data) and report the parity check."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise GraspError("ONNX export needs onnx, onnxscript and onnxruntime: "
                         "pip install 'grasp-deploy[onnx]'") from err
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    wrapped = _Logits(model)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    out_dir = checkpoint / ONNX_DIR
    out_dir.mkdir(exist_ok=True)
    path = out_dir / ONNX_FILE
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2)
    dims = {0: batch, 1: seq}
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamo=True,
            external_data=True,
            dynamic_shapes={"input_ids": dims, "attention_mask": dims},
        )
    # Check on a different shape than the one traced, with a padded row.
    ids2 = torch.randint(0, vocab, (3, seq_len + 5), generator=gen)
    mask2 = torch.ones_like(ids2)
    mask2[0, :3] = 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})[0]
    with torch.no_grad():
        want = wrapped(ids2, mask2).numpy()
    valid = mask2.bool().numpy()  # padded positions are not compared
    diff = float(abs(got - want)[valid].max())
    return {"file": f"{ONNX_DIR}/{ONNX_FILE}", "max_abs_logits_diff": diff,
            "checked_shape": list(ids2.shape), "onnxruntime": ort.__version__}
