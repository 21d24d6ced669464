"""Dropout audit: how far dropout moves a model's activations and output between training and evaluation.

Dropout h' = d * h / (1 - p), d ~ Bernoulli(1 - p), keeps the mean, E[h'] = mu, but raises the
variance to (mu^2 + sigma^2) / (1 - p) - mu^2. The audit sets every dropout site of a model to p,
runs real texts once in eval mode and `mc` times in train mode, and reports for each site the
input's mu and sigma^2 (in train mode), the output's measured variance against that formula, the
train/eval variance ratio, and how far the next non-linear layer's output (softmax, GELU,
LayerNorm) moves between the modes; then the same for the model's output: the mean over texts of
|E_train[f(x)] - f_eval(x)|, with the spread of f over the train-mode passes.

Moments are pooled over every element of a site's tensor (padding included), so they describe
the distribution the dropout sees, which is what the formula is about. A mean of `mc` noisy
passes is itself noisy: each shift comes with its noise floor, the |error| that mc passes of pure
noise would leave (sqrt(2/pi) * spread / sqrt(mc)), so a shift well above it is real.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AttentionInterface, PretrainedConfig, PreTrainedTokenizerBase
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from bertreg import data, dropout, plots
from bertreg.errors import UserError
from bertreg.model import HEAD_FILE, build_model, load_fold_model, load_tokenizer, mean_pool, resolve_model_path

AUDIT_ATTENTION = "bertreg_audit"
NOISE = math.sqrt(2 / math.pi)  # E|z| of a standard normal z


def observable_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, scaling: float | None = None,
                         dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose softmax and probability dropout are modules, so forward hooks see both.

    BERT-style attention hands `self.dropout.p` to a fused kernel (SDPA) or to functional dropout
    (eager) and never calls its dropout module; this one calls it on the attention probabilities.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    if "audit_softmax" not in module._modules:  # made on the first pass, hooked from the next one
        module.audit_softmax = nn.Softmax(dim=-1)
    probs = module.audit_softmax(scores)
    site = getattr(module, "dropout", None)
    if isinstance(site, nn.Module):
        probs = site(probs)
    else:
        probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def predicted_variance(mu: float, sigma2: float, p: float) -> float:
    """Var[d * h / (1 - p)] for h of mean mu and variance sigma2, d ~ Bernoulli(1 - p) independent of h."""
    return (mu ** 2 + sigma2) / (1 - p) - mu ** 2


def use_observable_attention(model: nn.Module) -> None:
    """Switch every config in the model to `observable_attention` (families that call their dropout module keep theirs)."""
    AttentionInterface.register(AUDIT_ATTENTION, observable_attention)
    AttentionMaskInterface.register(AUDIT_ATTENTION, eager_mask)
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig):
            config._attn_implementation = AUDIT_ATTENTION


def is_nonlinear(module: nn.Module) -> bool:
    """Softmax, activation functions and normalisation layers: where a variance gap becomes a mean shift."""
    name = type(module).__name__.lower()
    return (isinstance(module, (nn.Softmax, nn.LayerNorm, nn.GELU, nn.Tanh, nn.ReLU, nn.SiLU, nn.Sigmoid))
            or type(module).__module__ == "transformers.activations" or "layernorm" in name)


def dropout_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if dropout.is_dropout_module(m)]


def site_kind(model: nn.Module, name: str) -> str:
    """attention (on attention probabilities), head (before the regression layer), embeddings or hidden."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if "audit_softmax" in parent._modules or ("attention" in type(parent).__name__.lower()
                                              and "output" not in type(parent).__name__.lower() and attr == "dropout"):
        return "attention"
    if name == "head_dropout":
        return "head"
    return "embeddings" if "embedding" in name else "hidden"


class Moments:
    """Count, sum and sum of squares of every element seen, in float64."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        self.n += x.numel()
        self.s += x.sum().item()
        self.ss += x.square().sum().item()

    @property
    def mean(self) -> float:
        return self.s / self.n

    @property
    def var(self) -> float:
        return max(self.ss / self.n - self.mean ** 2, 0.0)


class MCShift:
    """Per element of a batch: eval value against the mean of the train-mode passes, summed over batches."""

    def __init__(self) -> None:
        self.eval: torch.Tensor | None = None
        self.s: torch.Tensor | None = None
        self.ss: torch.Tensor | None = None
        self.passes = 0
        self.abs_shift = 0.0
        self.sq_shift = 0.0
        self.spread = 0.0
        self.mc_var = 0.0
        self.n = 0
        self.eval_moments = Moments()
        self.per_row: list[np.ndarray] = []  # mean |shift| of each row (text) of each batch
        self.per_row_spread: list[np.ndarray] = []

    def set_eval(self, y: torch.Tensor) -> None:
        self.eval = y.detach().float().clone()
        self.s, self.ss, self.passes = torch.zeros_like(self.eval), torch.zeros_like(self.eval), 0
        self.eval_moments.add(self.eval)

    def add_train(self, y: torch.Tensor) -> None:
        y = y.detach().float()
        self.s += y
        self.ss += y.square()
        self.passes += 1

    def close_batch(self, rows: bool = False) -> None:
        mean = self.s / self.passes
        var = (self.ss / self.passes - mean.square()).clamp(min=0) * self.passes / max(self.passes - 1, 1)
        shift, spread = (mean - self.eval).abs(), var.sqrt()
        self.abs_shift += shift.sum().item()
        self.sq_shift += shift.double().square().sum().item()
        self.spread += spread.sum().item()
        self.mc_var += var.double().sum().item()
        self.n += shift.numel()
        if rows:
            self.per_row.append(shift.flatten(1).mean(1).numpy())
            self.per_row_spread.append(spread.flatten(1).mean(1).numpy())
        self.eval = self.s = self.ss = None

    def summary(self, scale: float | None = None) -> dict[str, float]:
        """Mean |shift|, its noise floor, the train-mode spread, and the RMS shift with the MC noise taken out.

        E[(mean of mc passes - eval)^2] = bias^2 + var / mc, so bias_rms subtracts the second term.
        """
        scale = scale or math.sqrt(self.eval_moments.var) or 1.0
        shift, spread = self.abs_shift / self.n, self.spread / self.n
        bias2 = self.sq_shift / self.n - self.mc_var / self.n / self.passes
        return {"shift": shift / scale, "spread": spread / scale,
                "noise_floor": NOISE * spread / math.sqrt(self.passes) / scale,
                "bias_rms": math.sqrt(max(bias2, 0.0)) / scale}


@dataclass
class SiteStats:
    eval: Moments = field(default_factory=Moments)
    train_in: Moments = field(default_factory=Moments)
    train_out: Moments = field(default_factory=Moments)


class Recorder:
    """Forward hooks on every dropout site and non-linear module of a model, recording by mode."""

    def __init__(self, model: nn.Module):
        self.mode = "order"
        self.order: list[tuple[str, str]] = []  # (site | nonlinear, call key) in execution order
        self.calls: Counter = Counter()
        self.sites: dict[str, SiteStats] = defaultdict(SiteStats)
        self.site_module: dict[str, str] = {}
        self.following: dict[str, str | None] = {}  # site key -> key of the next non-linear call
        self.watched: dict[str, MCShift] = {}
        self.handles = []
        for name, module in model.named_modules():
            if dropout.is_dropout_module(module):
                self.handles.append(module.register_forward_hook(self._site_hook(name)))
            elif is_nonlinear(module):
                self.handles.append(module.register_forward_hook(self._nonlinear_hook(name)))

    def _key(self, name: str) -> str:
        n = self.calls[name]
        self.calls[name] += 1
        return name if n == 0 else f"{name}#{n}"  # a module called twice in a pass is two sites

    def _site_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            key = self._key(name)
            self.site_module[key] = name
            stats = self.sites[key]
            if self.mode == "order":
                self.order.append(("site", key))
            elif self.mode == "eval":
                stats.eval.add(inputs[0])
            else:
                stats.train_in.add(inputs[0])
                stats.train_out.add(output)
        return hook

    def _nonlinear_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            key = self._key(name)
            if self.mode == "order":
                self.order.append(("nonlinear", key))
            elif key in self.watched:
                (self.watched[key].set_eval if self.mode == "eval" else self.watched[key].add_train)(output)
        return hook

    def start_pass(self, mode: str) -> None:
        self.mode = mode
        self.calls.clear()

    def end_order_pass(self) -> None:
        """Link each site to the first non-linear call after it, and watch those."""
        for i, (kind, key) in enumerate(self.order):
            if kind == "site":
                after = [k for kd, k in self.order[i + 1:] if kd == "nonlinear"]
                self.following[key] = after[0] if after else None
        self.watched = {k: MCShift() for k in set(self.following.values()) if k}
        self.sites.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class Subject:
    """What is audited: the module holding the dropout sites, its output f, and how to feed it."""

    module: nn.Module
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    tokenizer: PreTrainedTokenizerBase
    kind: str  # fold | backbone
    description: str
    settings: dict[str, Any] = field(default_factory=dict)


def _fold_dir(path: Path, fold: int | None) -> Path:
    """The fold folder to audit inside a run folder (the first complete fold unless one is named)."""
    folds = sorted((p for p in path.glob("fold_*") if (p / HEAD_FILE).is_file() and (p / "metrics.json").is_file()),
                   key=lambda p: int(p.name.split("_")[1]))
    if fold is not None:
        folds = [p for p in folds if p.name == f"fold_{fold}"]
        if not folds:
            raise UserError(f"{path} has no complete fold_{fold}")
    if not folds:
        raise UserError(f"{path} holds no complete fold (fold_<k>/ with {HEAD_FILE} and metrics.json): train it first")
    return folds[0]


def load_subject(spec: str, fold: int | None = None) -> Subject:
    """A trained run folder (one of its folds), a fold folder, or a bare backbone (local folder or pkg:)."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / HEAD_FILE).is_file() and any(path.glob(f"fold_*/{HEAD_FILE}")):
        path = _fold_dir(path, fold)
    if path.is_dir() and (path / HEAD_FILE).is_file():
        model, tokenizer, settings = load_fold_model(path)
        return Subject(model, model, tokenizer, "fold", str(path), settings)
    regressor = build_model(spec, 1, pooling="mean", backbone_dropout=None)
    tokenizer = load_tokenizer(resolve_model_path(spec))
    backbone = regressor.backbone.eval()

    def pooled(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)

    return Subject(backbone, pooled, tokenizer, "backbone", spec)


def audit(subject: Subject, texts: Sequence[str], p: float, mc: int, max_len: int, batch_size: int = 8,
          seed: int = 0, target_std: np.ndarray | None = None, progress: bool = True) -> dict[str, Any]:
    """Every dropout site of `subject` at probability p: the formula's check, the variance ratio, the shifts.

    The model is changed in place: every dropout set to p, attention switched to `observable_attention`
    (same eval output, tested); load a fresh one to use it for anything else.
    """
    if mc < 2:
        raise UserError(f"--mc must be at least 2 train-mode passes, got {mc}")
    torch.manual_seed(seed)
    model = subject.module
    dropout.set_module_dropout(model, p)
    use_observable_attention(model)
    ids, n_cut = data.tokenize(subject.tokenizer, texts, max_len)
    dataset = data.TokenizedDataset(ids)
    collate = data.Collator(subject.tokenizer.pad_token_id)
    batches = [collate([dataset[i] for i in rows]) for rows in data.sorted_batches(dataset.lengths, batch_size)]

    def run(batch: dict, mode: str) -> torch.Tensor:
        model.train(mode == "train")
        recorder.start_pass(mode)
        return subject.f(batch["input_ids"], batch["attention_mask"])

    with torch.inference_mode():
        model.eval()
        subject.f(batches[0]["input_ids"][:1], batches[0]["attention_mask"][:1])  # creates the observable softmaxes
        recorder = Recorder(model)
        try:
            run(batches[0], "order")
            recorder.end_order_pass()
            output = MCShift()
            bar = tqdm(total=len(batches) * mc, desc="train-mode passes", disable=not progress, dynamic_ncols=True)
            for batch in batches:
                output.set_eval(run(batch, "eval"))
                for _ in range(mc):
                    output.add_train(run(batch, "train"))
                    bar.update(1)
                output.close_batch(rows=True)
                for shift in recorder.watched.values():
                    shift.close_batch()
            bar.close()
        finally:
            recorder.remove()
            model.eval()
    return _report(subject, recorder, output, p, mc, len(texts), max_len, n_cut, target_std)


def _layer(name: str) -> int | None:
    found = re.search(r"\.(\d+)\.", name)
    return int(found.group(1)) if found else None


def _report(subject: Subject, recorder: Recorder, output: MCShift, p: float, mc: int, n: int, max_len: int,
            n_cut: int, target_std: np.ndarray | None) -> dict[str, Any]:
    sites = []
    for kind, key in recorder.order:
        if kind != "site":
            continue
        s = recorder.sites[key]
        mu, sigma2 = s.train_in.mean, s.train_in.var
        predicted = predicted_variance(mu, sigma2, p)
        following = recorder.following.get(key)
        entry = {"name": key, "kind": site_kind(subject.module, recorder.site_module[key]),
                 "layer": _layer(key), "p": p, "mu": mu, "sigma2": sigma2,
                 "var_train": s.train_out.var, "var_train_predicted": predicted,
                 "formula_error": s.train_out.var / predicted - 1 if predicted else 0.0,
                 "mean_train": s.train_out.mean, "mu_eval": s.eval.mean, "var_eval": s.eval.var,
                 "var_ratio": s.train_out.var / s.eval.var if s.eval.var else None, "next": following}
        if following:
            nxt = recorder.watched[following].summary()
            entry.update(next_shift=nxt["shift"], next_noise_floor=nxt["noise_floor"], next_spread=nxt["spread"],
                         next_bias_rms=nxt["bias_rms"])
        else:
            entry.update(next_shift=None, next_noise_floor=None, next_spread=None, next_bias_rms=None)
        sites.append(entry)
    per_text = np.concatenate(output.per_row)
    spread = np.concatenate(output.per_row_spread)
    if subject.kind == "fold":
        units = "target units"
        scale, relative_to = (float(np.mean(target_std)), "target std") if target_std is not None else (None, None)
    else:
        units = "pooled embedding units"
        scale, relative_to = math.sqrt(output.eval_moments.var), "embedding std"
    shift, floor = float(per_text.mean()), float(NOISE * spread.mean() / math.sqrt(mc))
    bias_rms = output.summary(scale=1.0)["bias_rms"]
    called = set(recorder.site_module.values())
    uncalled = [name for name, _ in dropout_sites(subject.module) if name not in called]
    return {"model": subject.description, "kind": subject.kind, "p": p, "mc": mc, "n_texts": n,
            "max_len": max_len, "n_truncated": n_cut, "sites": sites, "uncalled_dropout_modules": uncalled,
            "output_shift": shift, "output_mc_spread": float(spread.mean()), "output_noise_floor": floor,
            "output_bias_rms": bias_rms,
            "output_units": units, "output_relative_to": relative_to,
            "output_shift_relative": shift / scale if scale else None,
            "output_mc_spread_relative": float(spread.mean()) / scale if scale else None,
            "output_shift_per_text": per_text.tolist()}


def read_texts(path: str, text_col: str, n: int, seed: int,
               target_cols: Sequence[str] = ()) -> tuple[list[str], np.ndarray | None]:
    """Up to n texts of a CSV (a seeded sample), and the targets' std when the CSV holds them."""
    df = data.read_csv(path, "--data CSV")
    data.require_columns(df, [text_col], "--data CSV")
    texts = df[text_col]
    ok = texts.map(lambda t: isinstance(t, str) and t.strip() != "")
    if not ok.any():
        raise UserError(f"--data CSV {path} has no non-empty texts in column '{text_col}'")
    texts = texts[ok]
    if len(texts) > n:
        texts = texts.sample(n=n, random_state=seed)
    std = None
    if target_cols and all(c in df.columns for c in target_cols):
        std = df[list(target_cols)].apply(lambda c: c.astype(float)).std().to_numpy()
    return texts.tolist(), std


def _short(name: str) -> str:
    return re.sub(r"^(backbone\.)?(encoder\.)?(layers?|transformer\.layer)\.(\d+)\.", r"L\4.", name)


def format_table(report: dict[str, Any]) -> str:
    """One line per site: the formula's check, the variance ratio, and the next non-linear layer's shift."""
    head = (f"{'site':<34} {'kind':<10} {'mu':>9} {'sigma2':>9} {'var_train':>10} {'formula':>10} {'err':>7} "
            f"{'tr/ev':>8} {'next non-linear':<32} {'shift':>7} {'noise':>7} {'bias':>7}")
    lines = [head, "-" * len(head)]
    for s in report["sites"]:
        nxt = f"{_short(s['next'] or '-'):<32} " + (
            f"{s['next_shift']:7.4f} {s['next_noise_floor']:7.4f} {s['next_bias_rms']:7.4f}" if s["next"] else
            f"{'-':>7} {'-':>7} {'-':>7}")
        ratio = f"{s['var_ratio']:8.4g}" if s["var_ratio"] is not None else f"{'-':>8}"
        lines.append(f"{_short(s['name']):<34} {s['kind']:<10} {s['mu']:9.4f} {s['sigma2']:9.4g} {s['var_train']:10.4g} "
                     f"{s['var_train_predicted']:10.4g} {100 * s['formula_error']:6.2f}% {ratio} {nxt}")
    units = report["output_units"]
    rel = (f" = {report['output_shift_relative']:.4f} {report['output_relative_to']}"
           if report["output_shift_relative"] is not None else "")
    lines += ["", f"output shift mean|E_train f - f_eval| over {report['n_texts']} texts, {report['mc']} passes, "
                  f"p={report['p']:g}: {report['output_shift']:.4g} {units}{rel}",
              f"  MC spread of f in train mode {report['output_mc_spread']:.4g}; noise floor of the shift "
              f"{report['output_noise_floor']:.4g}; RMS shift with the MC noise taken out {report['output_bias_rms']:.4g}",
              "  (next non-linear layer, per element, in its eval std: shift = mean |E_train - eval|, noise = its "
              "floor from MC noise alone, bias = RMS shift with that noise taken out)"]
    if report["uncalled_dropout_modules"]:
        lines.append(f"dropout modules never called: {', '.join(report['uncalled_dropout_modules'])}")
    return "\n".join(lines)


def plot_audit(report: dict[str, Any], path: str | Path) -> None:
    """Per site in execution order: the train/eval variance ratio, and the shift of the next non-linear
    layer's output; then a histogram of the per-text output shift."""
    plt = plots.pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6), gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    sites = [s for s in report["sites"] if s["var_ratio"] is not None]
    colors = {"attention": "tab:orange", "hidden": "tab:blue", "embeddings": "tab:green", "head": "tab:red"}
    x, names = range(len(sites)), [_short(s["name"]) for s in sites]
    site_colors = [colors[s["kind"]] for s in sites]
    left.bar(x, [s["var_ratio"] for s in sites], color=site_colors)
    left.axhline(1 / (1 - report["p"]), color="gray", ls="--", lw=1, label=f"1/(1-p) = {1 / (1 - report['p']):.3f}")
    left.axhline(1, color="black", lw=0.8)
    ratios = [s["var_ratio"] for s in sites]
    if max(ratios) / max(min(ratios), 1e-12) > 10:
        left.set_yscale("log")  # near-uniform attention probabilities (tiny variance) gain orders of magnitude
    for kind, color in colors.items():
        if any(s["kind"] == kind for s in sites):
            left.bar([0], [0], color=color, label=kind)
    left.set_ylabel("Var train / Var eval at the site's output")
    left.set_title(f"dropout p={report['p']:g}: variance gap per site")
    left.legend(fontsize=7)
    middle.bar(x, [s["next_bias_rms"] or 0 for s in sites], color=site_colors)
    middle.set_ylabel("RMS shift of E_train vs eval (in its eval std)")
    middle.set_title("next non-linear layer's output: train/eval mean shift")
    for ax in (left, middle):
        ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    scale = report["output_shift"] / report["output_shift_relative"] if report["output_shift_relative"] else 1.0
    unit = report["output_relative_to"] or report["output_units"]
    right.hist(np.asarray(report["output_shift_per_text"]) / scale, bins=30, color="tab:purple", alpha=0.8)
    right.axvline(report["output_noise_floor"] / scale, color="black", ls="--", lw=1, label="noise floor")
    right.set_xlabel(f"|E_train f(x) - f_eval(x)| ({unit})")
    right.set_ylabel("texts")
    right.set_title(f"output shift over {report['n_texts']} texts, {report['mc']} train passes")
    right.legend(fontsize=7)
    plots.save_figure(fig, path)
