"""What can be pruned in a supported model family, and what each unit costs.

This is the project's one cost model. A decoder layer has two kinds of prunable units:

* FFN channel j: row j of ``gate_proj`` and ``up_proj`` and column j of ``down_proj``.
* KV group g: KV head g (its ``head_dim`` rows of ``k_proj`` and ``v_proj``), the
  ``group_size`` query heads that share it (rows of ``q_proj``) and the matching columns of
  ``o_proj``.

Embeddings, norms and the LM head are never pruned. Costs are in parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .errors import GraspError

FFN = "ffn"
KV = "kv"


@dataclass(frozen=True)
class Family:
    """A model family: Llama's module names and units, with what differs stated as data."""

    name: str  # the source config's model_type
    qkv_bias: bool | None  # True: q/k/v always carry a bias, o_proj none (Qwen2);
    #                        None: config.attention_bias puts one on all four (Llama)
    gate_keys: bool  # the KV gate scales keys too (False where a per-head norm follows k_proj)
    notes: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", None, True, "Llama 2 and 3.x: GQA or MHA, rope scaling (llama3) and "
                                "explicit head_dim carried, tied or untied embeddings"),
    Family("mistral", None, True, "Mistral: Llama's units; the sliding window (v0.1) is kept and "
                                  "honoured by the exported model in transformers and vLLM"),
    Family("qwen2", True, True, "Qwen2 and Qwen2.5: q/k/v biases sliced with their heads and "
                                "counted in a KV group's cost; tied or untied embeddings"),
    Family("qwen3", None, False, "Qwen3 (dense): explicit head_dim; q_norm/k_norm kept as they "
                                 "are; the KV gate scales values (a norm follows k_proj)"),
)}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def check_supported(config: Any, where: str) -> None:
    """Fail before any heavy work when ``config`` is not a LLaMA-family decoder.

    Pruned checkpoints are told apart by the checkpoint format (``checkpoint.format``)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ",".join(getattr(config, "architectures", None) or []) or "?"
        raise GraspError(
            f"unsupported architecture model_type={model_type!r} ({archs}) in {where}: "
            f"grasp-deploy prunes the families {', '.join(SUPPORTED_MODEL_TYPES)} (dense decoders; "
            "`grasp-deploy models` lists them)"
        )
    if getattr(config, "hidden_act", "silu") not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise GraspError(f"unsupported hidden_act={config.hidden_act!r} in {where}")


@dataclass(frozen=True)
class LayerShape:
    intermediate_size: int
    num_key_value_heads: int


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide unit counts and costs; per-layer where layers may differ."""

    model_type: str
    hidden_size: int
    head_dim: int
    group_size: int  # query heads per KV head
    attention_bias: bool
    mlp_bias: bool
    layers: tuple[LayerShape, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a model needs at least one decoder layer")
        for name in ("hidden_size", "head_dim", "group_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for i, layer in enumerate(self.layers):
            sizes = (layer.intermediate_size, layer.num_key_value_heads)
            if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
                raise ValueError(f"layer {i} has an empty FFN or no KV head: {layer}")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Any, group_size: int | None = None) -> ModelShape:
        """The shape of a dense config, or of a heterogeneous one (transformers'
        ``per_layer_config``) whose query heads per KV head ``group_size`` gives."""
        if group_size is None:
            check_supported(config, "the model config")
        hidden = config.hidden_size
        n_heads = config.num_attention_heads
        # transformers >= 5.16: a config with per-layer patches is "heterogeneous" and
        # config.per_layer_config[i] is layer i's view of it.
        per_layer = config.per_layer_config if getattr(config, "is_heterogeneous", False) else None
        layers = []
        for i in range(config.num_hidden_layers):
            src = per_layer[i] if per_layer else config
            layers.append(LayerShape(int(src.intermediate_size), int(src.num_key_value_heads)))
        if group_size is not None:
            group = int(group_size)
            if group < 1:
                raise GraspError(f"query heads per KV head must be positive, not {group_size}")
        elif per_layer:
            raise GraspError("a config with per-layer patches needs its query heads per KV head")
        else:
            n_kv = layers[0].num_key_value_heads
            if n_heads % n_kv:
                raise GraspError(f"num_attention_heads={n_heads} is not a multiple of "
                                 f"num_key_value_heads={n_kv}")
            group = n_heads // n_kv
        head_dim = getattr(config, "head_dim", None) or hidden // n_heads
        return cls(
            model_type=config.model_type,
            hidden_size=int(hidden),
            head_dim=int(head_dim),
            group_size=int(group),
            attention_bias=_qkv_bias(config),
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            layers=tuple(layers),
        )

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def family(self) -> Family | None:
        return FAMILIES.get(self.model_type)

    @property
    def o_proj_bias(self) -> bool:
        """Does the source o_proj have a bias? (Llama's attention_bias: yes; Qwen2's q/k/v
        biases: no.)"""
        return self.attention_bias and not (self.family and self.family.qkv_bias)

    @property
    def gate_keys(self) -> bool:
        return self.family.gate_keys if self.family else True

    @classmethod
    def from_json(cls, data: dict) -> ModelShape:
        layers = tuple(LayerShape(**layer) for layer in data["layers"])
        return cls(**{**data, "layers": layers})

    # -- costs ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def ffn_unit_cost(self) -> int:
        # gate row + up row + down column (+ the gate/up bias entries; down's bias is per
        # hidden unit and stays).
        return 3 * self.hidden_size + (2 if self.mlp_bias else 0)

    @property
    def kv_unit_cost(self) -> int:
        g, h, d = self.group_size, self.head_dim, self.hidden_size
        # q rows (g*h) + k rows (h) + v rows (h) + o columns (g*h), each of length d.
        cost = (2 * g + 2) * h * d
        if self.attention_bias:
            cost += (g + 2) * h  # q, k, v biases; o_proj's bias is per hidden unit and stays
        return cost

    def unit_cost(self, kind: str) -> int:
        return self.ffn_unit_cost if kind == FFN else self.kv_unit_cost

    def layer_cost(self, ffn: int, kv: int) -> int:
        return ffn * self.ffn_unit_cost + kv * self.kv_unit_cost

    def prunable_params(self) -> int:
        return sum(
            self.layer_cost(layer.intermediate_size, layer.num_key_value_heads)
            for layer in self.layers
        )

    def kv_bytes_per_token(self, kv_heads: list[int] | None = None, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token occupies across all layers (keys and values)."""
        heads = (
            kv_heads
            if kv_heads is not None
            else [layer.num_key_value_heads for layer in self.layers]
        )
        return sum(2 * n * self.head_dim * dtype_bytes for n in heads)


def _qkv_bias(config: Any) -> bool:
    family = FAMILIES.get(str(getattr(config, "model_type", "")))
    if family is not None and family.qkv_bias is not None:
        return family.qkv_bias
    return bool(getattr(config, "attention_bias", False))
