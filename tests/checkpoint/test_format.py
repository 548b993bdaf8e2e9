"""The checkpoint format's one copy of ``layer_config`` and the self-contained copy in the
remote code (shipped in every checkpoint) must agree."""

import pytest

from grasp_deploy.checkpoint import format as fmt
from grasp_deploy.checkpoint.parallel import layer_sizes

CASES = [
    # (dense fields, per-layer patches)
    (
        dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             num_hidden_layers=3),
        {
            "0": {"intermediate_size": 96, "num_key_value_heads": 2},
            "1": {"intermediate_size": 40, "num_key_value_heads": 1},
            "2": {"intermediate_size": 7, "num_key_value_heads": 2},
        },
    ),
    (
        dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
             num_hidden_layers=2, head_dim=64),
        {
            "0": {"intermediate_size": 1024, "num_key_value_heads": 3},
            "1": {"intermediate_size": 64, "num_key_value_heads": 1},
        },
    ),
    (
        dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=8, intermediate_size=256,
             num_hidden_layers=2),
        None,
    ),  # no patches: every layer is the dense one
]


def _config_class(family: str):
    import importlib

    kind = fmt.kind_of(family)
    return getattr(importlib.import_module(kind.modules[0]), kind.config_class)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("fields,patches", CASES)
def test_remote_code_layer_config_agrees_with_the_format(fields, patches, family):
    group = fields["num_attention_heads"] // fields["num_key_value_heads"]
    extra = {fmt.PER_LAYER_FIELD: patches} if patches else {}
    config = _config_class(family)(**fields, **extra, **{fmt.GROUP_SIZE_FIELD: group})
    for i in range(config.num_hidden_layers):
        ours, theirs = fmt.layer_config(config, i), config.layer_config(i)
        for name in ("intermediate_size", "num_key_value_heads", "num_attention_heads",
                     "hidden_size", "head_dim"):
            assert getattr(ours, name, None) == getattr(theirs, name, None), (i, name)
        want = patches[str(i)] if patches else fields
        assert ours.intermediate_size == want["intermediate_size"]
        assert ours.num_attention_heads == want["num_key_value_heads"] * group
    assert layer_sizes(config) == [
        (theirs.num_attention_heads, theirs.num_key_value_heads, theirs.intermediate_size)
        for theirs in map(config.layer_config, range(config.num_hidden_layers))]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_remote_code_names_match_the_format(family):
    import importlib

    kind = fmt.kind_of(family)
    assert fmt.kind_of(kind.model_type) == kind
    config_module, model_module = (importlib.import_module(
        "grasp_deploy.checkpoint.hf." + name.removesuffix(".py")) for name in kind.remote_code)
    config_class = getattr(config_module, kind.auto_map["AutoConfig"].split(".")[1])
    assert config_class.model_type == kind.model_type
    assert hasattr(model_module, kind.auto_map["AutoModelForCausalLM"].split(".")[1])
    assert kind.auto_map["AutoModelForCausalLM"].endswith(kind.architecture)


def test_only_the_format_module_spells_the_checkpoint_file_names():
    """One place knows the checkpoint format: elsewhere a path to our own files (the manifest,
    the model card) is built from ``checkpoint.format``'s constants, never from a literal.
    (The weight and index names are transformers' own, read from any model directory.)"""
    import ast
    from pathlib import Path

    names = {fmt.MANIFEST, fmt.CARD}
    root = Path(fmt.__file__).resolve().parents[1]
    found = []
    for path in sorted([*root.rglob("*.py"), *(root.parent / "serving").rglob("*.py")]):
        if path.name == "format.py" and path.parent.name == "checkpoint":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.value!r}")
    assert not found, "use checkpoint.format's constants:\n" + "\n".join(found)
