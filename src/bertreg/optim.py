"""AdamW with layer-wise learning-rate decay, a separate head learning rate, and a warmup schedule."""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from transformers import get_scheduler

from bertreg.model import Regressor, encoder_layers

_NO_DECAY = re.compile(r"(bias|norm|LayerNorm|layer_norm|ln_)", re.IGNORECASE)


def layer_depths(model: Regressor) -> dict[str, int]:
    """Depth of each backbone parameter: 0 for embeddings, i+1 for encoder block i, top+1 for the rest.

    Parameters above the blocks (a pooler, DeBERTa's relative-position norm) train like the top block.
    """
    layers = encoder_layers(model.backbone)
    block_of = {id(p): i + 1 for i, block in enumerate(layers) for p in block.parameters()}
    top = len(layers)
    depths = {}
    for name, param in model.backbone.named_parameters():
        if id(param) in block_of:
            depths[name] = block_of[id(param)]
        elif "embed" in name.lower():
            depths[name] = 0
        else:
            depths[name] = top
    return depths


def param_groups(model: Regressor, lr: float, head_lr: float | None, decay: float,
                 weight_decay: float) -> list[dict]:
    """One group per (depth, weight decay or not): block i from the top gets lr * decay**i.

    Biases and norms get no weight decay; pooling and head get head_lr (default lr).
    """
    depths = layer_depths(model)
    top = max(depths.values(), default=0)
    groups: dict[tuple, dict] = {}

    def add(name: str, param: nn.Parameter, group_lr: float, key: str) -> None:
        wd = 0.0 if _NO_DECAY.search(name) or param.ndim < 2 else weight_decay
        group = groups.setdefault((key, wd), {"params": [], "lr": group_lr, "weight_decay": wd, "name": f"{key}{'' if wd else '.no_decay'}"})
        group["params"].append(param)

    for name, param in model.backbone.named_parameters():
        if param.requires_grad:
            depth = depths[name]
            add(name, param, lr * decay ** (top - depth), f"backbone.depth{depth}")
    for name, param in model.named_parameters():
        if param.requires_grad and not name.startswith("backbone."):
            add(name, param, head_lr or lr, "head")
    return list(groups.values())


def make_optimizer(model: Regressor, lr: float, head_lr: float | None, decay: float,
                   weight_decay: float, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; `fused`: one kernel per step (CUDA and CPU), else the foreach path."""
    return torch.optim.AdamW(param_groups(model, lr, head_lr, decay, weight_decay), lr=lr,
                             fused=fused or None)


def warmup_steps(warmup: float, total: int) -> int:
    return int(math.ceil(warmup * total)) if warmup < 1 else int(warmup)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup: float, total: int):
    kind = {"constant": "constant_with_warmup"}.get(name, name)
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps(warmup, total), num_training_steps=total)
