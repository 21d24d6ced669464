"""The regressor: a BERT-family backbone, a pooling layer, head dropout and a linear head.

A fold's folder holds everything needed to rebuild it exactly as trained, with no network:
`config.json` (the backbone's config, with the dropout actually used), `model.safetensors`
(backbone, pooling and head), the tokenizer files, and `bertreg.json` (head settings).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

try:  # an attention registry (transformers >= 4.53); older releases, as on some Kaggle images, keep theirs
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError:
    AttentionInterface = None

from bertreg import dropout, files
from bertreg.errors import UserError

HEAD_FILE = "bertreg.json"
SDPA = "bertreg_sdpa"  # transformers' SDPA attention, computed in fp32 when training in bf16 on a CPU


def resolve_model_path(spec: str) -> str:
    """A local folder, `pkg:MODULE` (a model shipped in an installed package), or a hub name."""
    if spec.startswith("pkg:"):
        module_name = spec[4:]
        try:  # imported here: the demo's model package is absent from Kaggle images
            module = importlib.import_module(module_name)
        except ImportError:
            raise UserError(f"model.name_or_path '{spec}': package '{module_name}' is not installed "
                            f"(pip install {module_name.replace('_', '-')})") from None
        getter = getattr(module, "get_model_path", None)
        path = Path(getter()) if getter else Path(module.__file__).parent / "model"
        if not path.is_dir():
            raise UserError(f"model.name_or_path '{spec}': no model folder at {path}")
        return str(path)
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model path {spec} has no config.json: not a model folder")
        return str(path)
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep == "\\" and "\\" in spec
    if looks_local or offline():
        raise UserError(f"model path does not exist: {spec}")
    return spec


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _from_pretrained(loader: Any, path: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(path, local_files_only=offline() or os.path.isdir(path), **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load '{path}': {str(err).splitlines()[0]}") from None


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return _from_pretrained(AutoTokenizer, path)


class AttentionPooling(nn.Module):
    """A learned weighted mean over tokens: a small MLP scores each token, padding excluded."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        weights = scores.softmax(-1).to(hidden.dtype)
        return torch.einsum("bt,bth->bh", weights, hidden)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class Regressor(nn.Module):
    """Backbone -> pooling -> head dropout -> linear, in target units.

    The head learns z-scored targets; `target_mean` and `target_std` (buffers, saved with the
    weights) map its output back, so every caller gets predictions in target units.
    """

    def __init__(self, backbone: nn.Module, n_targets: int, pooling: str = "mean",
                 head_dropout: float = 0.0, target_mean: Any = None, target_std: Any = None):
        super().__init__()
        # BERT's and RoBERTa's pooler feeds nothing here: without it no weight goes without a
        # gradient under DDP, and its matmul is not computed for nothing
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size if hasattr(backbone.config, "hidden_size") else backbone.config.dim
        self.attention = AttentionPooling(hidden) if pooling == "attention" else None
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, n_targets)
        std = getattr(backbone.config, "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)
        mean = torch.zeros(n_targets) if target_mean is None else torch.as_tensor(target_mean, dtype=torch.float32)
        scale = torch.ones(n_targets) if target_std is None else torch.as_tensor(target_std, dtype=torch.float32)
        self.register_buffer("target_mean", mean.reshape(n_targets).clone())
        self.register_buffer("target_std", scale.reshape(n_targets).clone())

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "attention":
            return self.attention(hidden, attention_mask)
        return mean_pool(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(input_ids, attention_mask).to(self.head.weight.dtype)  # a bf16 backbone, an fp32 head
        z = self.head(self.head_dropout(pooled)).float()
        return z * self.target_std + self.target_mean

    def head_settings(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "head_dropout": self.head_dropout.p, "n_targets": self.head.out_features}


def _sdpa_fp32_backward_on_cpu(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """SDPA; in fp32 when it must be differentiated in bf16 on a CPU.

    There PyTorch's bf16 flash-attention backward runs at half the speed of its fp32 one (B=16,
    T=224, 12 heads of 32: 38 against 20 ms a layer on this project's CPUs), while the matmuls
    around it stay in bf16. Elsewhere (GPUs, inference, fp32) this is transformers' SDPA as is.
    """
    if query.device.type != "cpu" or query.dtype != torch.bfloat16 or not torch.is_grad_enabled():
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


if AttentionInterface is not None:
    AttentionInterface.register(SDPA, _sdpa_fp32_backward_on_cpu)
    AttentionMaskInterface.register(SDPA, sdpa_mask)


def use_kit_sdpa(backbone: nn.Module) -> None:
    """Switch a backbone on transformers' SDPA to the kit's variant; others (DeBERTa: its own attention) stay."""
    if AttentionInterface is None or not hasattr(backbone, "set_attn_implementation"):
        return
    if getattr(backbone.config, "_attn_implementation", None) == "sdpa" and backbone._can_set_attn_implementation():
        backbone.set_attn_implementation(SDPA)


def cast_for_inference(model: Regressor, dtype: torch.dtype) -> Regressor:
    """The backbone and pooling in `dtype` (bf16 weights: no per-op casts); head and target scale stay fp32."""
    model.backbone.to(dtype)
    if model.attention is not None:
        model.attention.to(dtype)
    return model.eval()


class FrozenCompiled(nn.Module):
    """An inference model through torch.compile with inductor's freezing.

    Freezing folds the weights into the compiled graph as constants, which lets inductor pre-pack
    them for oneDNN and fuse bias and GELU into the matmuls: steady-state inference of a bf16
    MiniLM ran 1.25x faster on this project's CPUs, for about 14 s of compiling per model (README,
    Speed). The frozen weights are the model's at the first call: compile every fold's model anew,
    and `torch._dynamo.reset()` after it, which also frees them.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from torch._inductor import config as inductor_config  # here: importing inductor takes a while

        self.inductor_config = inductor_config
        self.compiled = torch.compile(model, dynamic=True)  # every batch has its own length

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        # compiling happens inside calls (the first, and any recompile), so the setting is scoped to them
        with torch.no_grad(), self.inductor_config.patch(freezing=True):
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                raise compile_failure(err, "predict without --compile") from None


def compile_failure(err: Exception, instead: str) -> UserError:
    """One line for a torch.compile that cannot compile here (no C++ compiler, a GPU too old for Triton)."""
    reason = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return UserError(f"torch.compile cannot compile here ({reason}): {instead}")


def _quiet_transformers() -> None:
    # Loading a base model from a *ForMaskedLM checkpoint lists every unused head weight, and
    # transformers draws a bar per load: one per fold is noise next to the training bars.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def build_model(name_or_path: str, n_targets: int, pooling: str = "mean", head_dropout: float = 0.0,
                backbone_dropout: float | None = 0.0, reinit_layers: int = 0,
                target_mean: Any = None, target_std: Any = None,
                gradient_checkpointing: bool = False) -> Regressor:
    """A fresh regressor on a pretrained backbone, with backbone dropout set (and checked) before training."""
    _quiet_transformers()
    path = resolve_model_path(name_or_path)
    config = _from_pretrained(AutoConfig, path)
    if backbone_dropout is not None:
        dropout.set_config_dropout(config, backbone_dropout)
    backbone = _from_pretrained(AutoModel, path, config=config)
    if backbone_dropout is not None:
        dropout.set_module_dropout(backbone, backbone_dropout)
        if backbone_dropout == 0:
            dropout.assert_no_dropout(backbone)
    if reinit_layers:
        reinit_top_layers(backbone, reinit_layers)
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    use_kit_sdpa(backbone)
    return Regressor(backbone, n_targets, pooling, head_dropout, target_mean, target_std)


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, found by shape rather than by family name."""
    stacks = [m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise UserError(f"cannot find the encoder layers of {type(backbone).__name__}")
    return max(stacks, key=lambda m: sum(p.numel() for p in m.parameters()))


def reinit_top_layers(backbone: nn.Module, n: int) -> None:
    """Re-initialise the top n encoder blocks, as the checkpoint's own init would (normal weights, zero biases)."""
    layers = encoder_layers(backbone)
    if n > len(layers):
        raise UserError(f"model.reinit_layers={n} but the backbone has only {len(layers)} layers")
    std = getattr(backbone.config, "initializer_range", 0.02)
    for module in layers[len(layers) - n:].modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def save_fold_model(model: Regressor, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                    extra: dict[str, Any]) -> None:
    """Write a loadable fold folder, every file atomically (the weights last), so a crash never leaves a torn file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".save.") as tmp:
        model.backbone.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            os.replace(f, out_dir / f.name)
    files.write_json(out_dir / HEAD_FILE, {**model.head_settings(), **extra})
    with files.atomic_path(out_dir / "model.safetensors") as tmp:
        save_model(model, str(tmp))


def load_fold_model(fold_dir: str | Path) -> tuple[Regressor, PreTrainedTokenizerBase, dict[str, Any]]:
    """Rebuild a fold's model exactly as trained (its recorded dropout included), in eval mode."""
    _quiet_transformers()
    fold_dir = Path(fold_dir)
    settings = json.loads((fold_dir / HEAD_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(fold_dir, local_files_only=True)
    backbone = AutoModel.from_config(config)
    model = Regressor(backbone, settings["n_targets"], settings["pooling"], settings["head_dropout"])
    load_model(model, str(fold_dir / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(fold_dir, local_files_only=True)
    return model.eval(), tokenizer, settings
