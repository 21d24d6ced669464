"""Switching dropout off inside a backbone, for any encoder family AutoModel loads.

Why: dropout keeps a unit's mean, E[h'] = mu, but raises its variance to
(mu^2 + sigma^2) / (1 - p) - mu^2. GELU, LayerNorm and the attention softmax turn that
train/eval variance gap into a shift of the output mean. A classifier's relative logits
hardly notice; a regressor's absolute output does, so validation loss oscillates and
settles higher. Strong CommonLit and Feedback Prize solutions set it to 0.

Three layers of defence, because families store dropout differently:
1. config attributes (`hidden_dropout_prob`, `attention_dropout`, DeBERTa's `pooler_dropout`
   and `cls_dropout`, ELECTRA's `summary_last_dropout`, ...) are set before the model is built;
2. every dropout module left (nn.Dropout and custom classes such as StableDropout) gets p;
3. float attributes such as `module.attention_dropout = 0.1`, which some attention
   implementations read instead of a module, get p too.
Then `live_dropout` lists anything still active, and `assert_no_dropout` fails on it.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig


def is_dropout_name(name: str) -> bool:
    name = name.lower()
    return "dropout" in name or "drop_prob" in name


def _is_probability(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def config_dropout(config: PretrainedConfig) -> dict[str, float]:
    """Every dropout probability a config holds, by attribute name."""
    return {k: v for k, v in vars(config).items() if is_dropout_name(k) and _is_probability(v)}


def set_config_dropout(config: PretrainedConfig, p: float) -> dict[str, float]:
    """Set every dropout probability of a config to p, before the model is built; returns the old ones.

    Attributes that are None (e.g. `classifier_dropout`, which then falls back to the hidden
    dropout) are set too, so no fallback can bring a non-zero value back.
    """
    old = config_dropout(config)
    for key, value in list(vars(config).items()):
        if is_dropout_name(key) and (value is None or _is_probability(value)):
            setattr(config, key, float(p))
    return old


def is_dropout_module(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.dropout._DropoutNd) or "dropout" in type(module).__name__.lower()


def _module_probabilities(module: nn.Module) -> dict[str, float]:
    """The dropout probabilities a module holds: `p` / `drop_prob` of a dropout module, float attributes by name."""
    out = {}
    for key, value in vars(module).items():
        if key.startswith("_") or not _is_probability(value):
            continue
        if is_dropout_name(key) or (is_dropout_module(module) and key in ("p", "drop_prob")):
            out[key] = float(value)
    return out


def set_module_dropout(model: nn.Module, p: float) -> int:
    """Set p on every dropout module and float dropout attribute of a built model; returns how many were set."""
    count = 0
    for module in model.modules():
        for key in _module_probabilities(module):
            setattr(module, key, float(p))
            count += 1
    return count


def live_dropout(model: nn.Module) -> list[str]:
    """`name.attr=p` for every dropout site with p > 0 that training mode would apply."""
    return [
        f"{name or type(model).__name__}.{key}={value:g}"
        for name, module in model.named_modules()
        for key, value in _module_probabilities(module).items()
        if value > 0
    ]


def assert_no_dropout(model: nn.Module) -> None:
    live = live_dropout(model)
    if live:
        shown = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
        raise RuntimeError(f"backbone dropout is still live after switching it off: {shown}")
