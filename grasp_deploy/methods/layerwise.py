"""Running a model one decoder layer at a time, for the methods that work layer by layer
(reconstruction, StructPrune, --reselect).

A ``LayerSource`` (``base``) hands out decoder layers and, for a batch of token blocks, the
hidden states entering layer 0 together with the keyword arguments every layer receives
(RoPE, the attention mask of its kind). ``ModelLayers`` is that for a loaded model;
``sources.stream.LayerStream`` for a model read from its files one layer at a time. The
keyword arguments travel beside the hidden states they belong to, as ``(x, kwargs)`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import field
from typing import Any

import torch
from torch import nn

from ..core.masking import decoder_layers
from .base import FLAG, Flag, LayerSource

ATTN, MLP = "self_attn.o_proj.weight", "mlp.down_proj.weight"

# Options of the layer-wise refit, shared by every part that runs it (structprune, --reconstruct,
# --reselect): one name, one default, one help.
RIDGE = Flag("Ridge of the layer-wise refit (--reconstruct, --reselect, structprune), as a "
             "fraction of the Gram matrix's mean diagonal.", name="--reconstruct-ridge")
SINK_SKIP = Flag("Positions at the start of every calibration block that the unit choice and "
                 "refit of --method structprune and --reselect leave out of their least "
                 "squares: position 0 is an attention sink whose activations outweigh the "
                 "rest of the block (bench/results/sink-screen/).", name="--sink-skip")
DEFAULT_RIDGE, DEFAULT_SINK_SKIP = 1e-3, 1


def shared(default: Any, spec: Flag) -> Any:
    """A settings field that is one of the shared options above."""
    return field(default=default, metadata={FLAG: spec})
# One batch's hidden states and every layer's keyword arguments for it.
State = tuple[torch.Tensor, list[dict[str, Any]]]


def tensor_name(layer: int, which: str) -> str:
    return f"model.layers.{layer}.{which}"


def batches_of(blocks: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    for start in range(0, blocks.shape[0], batch):
        yield blocks[start:start + batch]


def call_layer(layer: nn.Module, x: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def input_of(module: nn.Module, run: Callable[..., Any], *args: Any, **kwargs: Any
             ) -> torch.Tensor:
    """What ``module`` receives (after the masks' pre-hooks) while ``run(*args, **kwargs)``
    executes."""
    box: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, a: box.append(a[0].detach()))
    try:
        run(*args, **kwargs)
    finally:
        handle.remove()
    return box[0]


def initial_states(src: LayerSource, blocks: torch.Tensor, batch: int) -> list[State]:
    """Per batch of ``batch`` blocks: the hidden states entering layer 0 and every layer's
    keyword arguments."""
    return [src.embed(ids) for ids in batches_of(blocks, batch)]


class _Stop(Exception):
    """Raised in a hook to end a forward once the inputs it needs are captured."""


class ModelLayers:
    """A loaded model as a ``LayerSource``: its own decoder layers, and the inputs its own
    forward gives them, so that every family's details (sliding windows, per-layer mask
    types) hold."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._layers = decoder_layers(model)
        self.num_layers = len(self._layers)

    def layer(self, i: int) -> nn.Module:
        return self._layers[i]

    def embed(self, blocks: torch.Tensor) -> State:
        state: dict[str, Any] = {"kwargs": {}}
        last = self.num_layers - 1

        def grab(i: int):
            def hook(_mod, args, kw):
                if i == 0:
                    state["x"] = (args[0] if args else kw["hidden_states"]).detach()
                state["kwargs"][i] = {k: v for k, v in kw.items() if k != "hidden_states"}
                if i == last:
                    raise _Stop
            return hook

        handles = [layer.register_forward_pre_hook(grab(i), with_kwargs=True)
                   for i, layer in enumerate(self._layers)]
        try:
            self.model(input_ids=blocks.to(device_of(self.model)), use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return state["x"], [state["kwargs"][i] for i in range(self.num_layers)]


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
