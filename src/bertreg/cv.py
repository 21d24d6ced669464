"""A K-fold run from a config to its outputs in {output_dir}/{experiment}/.

config.yaml, folds.csv, fold_<k>/ (model, history.csv, oof.csv, metrics.json last), oof.csv,
metrics.json and curves.png. A fold is complete when its metrics.json exists; running the same
command again keeps complete folds, resumes an interrupted one from its latest checkpoint
(fold_<k>/checkpoints/, see checkpoint.py) and redoes one without a checkpoint from its start.
The main process holds {experiment}/.lock meanwhile, so a second run on the folder stops at once.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from bertreg import config as config_mod
from bertreg import checkpoint, data, demo, files, folds, lock, metrics, plots
from bertreg.config import Config
from bertreg.engine import EvalCallback, train_fold
from bertreg.errors import UserError
from bertreg.model import load_tokenizer, resolve_model_path
from bertreg.stopping import StopRequests

# Keys that may differ when a run is resumed: where it lives, which folds, overwrite, workers, checkpointing.
_RESUME_FREE = {"output_dir", "train.folds", "train.overwrite", "train.num_workers", "train.checkpoint_every",
                "train.keep_checkpoints", "train.time_limit"}


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.experiment


def pred_cols(target_cols: list[str]) -> list[str]:
    return ["pred"] if len(target_cols) == 1 else [f"pred_{c}" for c in target_cols]


def fold_complete(fold_dir: Path) -> bool:
    return (fold_dir / "metrics.json").is_file()


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def mixed_precision(setting: str) -> str | None:
    """The precision to ask accelerate for; None leaves it to `accelerate launch` / its config file."""
    if setting != "auto":
        return setting
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return None
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "no"


def inference_dtype(accelerator: Accelerator) -> torch.dtype:
    """bf16 weights for inference where training runs in bf16 (hardware that has it fast), else fp32."""
    return torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32


def keep_freed_memory() -> None:
    """Make glibc keep freed large blocks for reuse instead of unmapping them (training only).

    By default each activation tensor over 32 MB is a fresh mmap whose pages the kernel faults in
    and zeroes on first touch. In the throughput benchmark the kit trained at 28.7 and 30.4
    samples/s with this and 26.6-28.3 without; a fresh process's inference got slower with it
    (3.9 s against 3.2 s for 384 rows), so predicting leaves it out (`inference.make_accelerator`).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap
        libc.mallopt(-1, 1 << 34)  # M_TRIM_THRESHOLD: keep freed heap memory instead of returning it
    except (OSError, AttributeError):
        pass  # not glibc (musl): nothing to tune


def make_accelerator(cfg: Config) -> Accelerator:
    keep_freed_memory()
    return Accelerator(mixed_precision=mixed_precision(cfg.train.mixed_precision),
                       gradient_accumulation_steps=cfg.train.grad_accum)


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = config_mod.flatten(old), config_mod.flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in _RESUME_FREE and a.get(k) != b.get(k)]


def _prepare_dir(cfg: Config, out: Path, accelerator: Accelerator) -> None:
    """Clear the folder for an overwrite, or check that a run already there used this config."""
    saved = out / "config.yaml"
    if cfg.train.overwrite:
        if accelerator.is_main_process and out.exists():
            for child in out.iterdir():  # all but the lock this run holds
                if child.is_dir():
                    shutil.rmtree(child)
                elif child.name != lock.LOCK_FILE:
                    child.unlink()
    elif saved.is_file():
        diff = _config_diff(config_mod.read_yaml(saved), cfg.to_dict())
        if diff:
            raise UserError(f"{out} holds a run with another config ({'; '.join(diff[:3])}); "
                            f"set train.overwrite=true to retrain it, or choose another experiment name")
    accelerator.wait_for_everyone()


def _fold_assignment(cfg: Config, df: pd.DataFrame, out: Path, accelerator: Accelerator) -> np.ndarray:
    d = cfg.data
    saved = out / "folds.csv"
    if saved.is_file():  # a resumed run keeps its folds even if the splitter's code changed meanwhile
        return folds.read_folds(saved, df[d.id_col], d.id_col, d.n_folds)
    if d.folds_csv:
        assignment = folds.read_folds(d.folds_csv, df[d.id_col], d.id_col, d.n_folds)
    else:
        assignment = folds.make_folds(df, d.target_cols, d.n_folds, cfg.seed, d.group_col)
    if accelerator.is_main_process:
        files.write_csv(saved, pd.DataFrame({d.id_col: df[d.id_col], "fold": assignment}))
    return assignment


def _save_fold(fold_dir: Path, result, ids: pd.Series, targets: np.ndarray, cfg: Config) -> None:
    cols = config_mod.target_cols(cfg)
    oof = pd.DataFrame({cfg.data.id_col: ids.to_numpy(), "fold": result.fold})
    oof[cols] = targets
    oof[pred_cols(cols)] = result.val_pred
    files.write_csv(fold_dir / "history.csv", pd.DataFrame(result.history))
    files.write_csv(fold_dir / "oof.csv", oof)
    # written last: its presence marks the fold complete
    files.write_json(fold_dir / "metrics.json", {"fold": result.fold, "score": result.score,
                                                 "best_step": result.best_step, "n_val": len(ids)})


def summarize(cfg: Config, out: Path, metric: str) -> dict[str, Any]:
    """oof.csv, metrics.json and curves.png from every complete fold of the run."""
    done = sorted(int(p.name.split("_")[1]) for p in out.glob("fold_*") if fold_complete(p))
    cols = config_mod.target_cols(cfg)
    oof = pd.concat([pd.read_csv(out / f"fold_{k}" / "oof.csv", dtype={cfg.data.id_col: str}) for k in done])
    fold_scores = [files.read_json(out / f"fold_{k}" / "metrics.json") for k in done]
    cv = metrics.score(metric, oof[cols].to_numpy(), oof[pred_cols(cols)].to_numpy())
    summary = {"metric": metric, "cv": cv, "n_oof": len(oof),
               "folds": [{"fold": m["fold"], "score": m["score"], "best_step": m["best_step"]} for m in fold_scores]}
    if len(cols) > 1:
        per_col = metrics.per_column_rmse(oof[cols].to_numpy(), oof[pred_cols(cols)].to_numpy())
        summary["per_target_rmse"] = dict(zip(cols, map(float, per_col)))
    files.write_csv(out / "oof.csv", oof)
    files.write_json(out / "metrics.json", summary)
    histories = {k: pd.read_csv(out / f"fold_{k}" / "history.csv") for k in done}
    plots.plot_curves(histories, metric, out / "curves.png",
                      best=[(m["fold"], m["best_step"], m["score"]) for m in fold_scores],
                      title=f"{cfg.experiment}: validation {metric} per fold, CV {cv:.4f}")
    return summary


def print_summary(summary: dict[str, Any], accelerator: Accelerator, out: Path) -> None:
    rows = "\n".join(f"  fold {f['fold']}: {f['score']:.4f} (best step {f['best_step']})" for f in summary["folds"])
    accelerator.print(f"{summary['metric']} per fold:\n{rows}\n  CV {summary['metric']}: {summary['cv']:.4f} "
                      f"on {summary['n_oof']} out-of-fold rows\nresults in {out}/")


def run(cfg: Config, accelerator: Accelerator | None = None, on_eval: EvalCallback | None = None) -> dict[str, Any]:
    """Train every requested fold of the config (resuming), write the outputs, return metrics.json's content."""
    d, t = cfg.data, cfg.train
    cols = config_mod.target_cols(cfg)
    if d.make_demo:
        demo.ensure_demo(d.train_csv)
    # Everything is checked before a run folder is touched.
    df = data.load_train(d.train_csv, d.id_col, d.text_col, cols, d.group_col, d.n_folds)
    tokenizer = load_tokenizer(resolve_model_path(cfg.model.name_or_path))
    metric = t.metric or metrics.default_metric(len(cols))
    accelerator = accelerator or make_accelerator(cfg)
    out = run_dir(cfg)
    accelerator.print(f"{cfg.experiment}: {len(df)} rows, {d.n_folds} folds, targets {', '.join(cols)} ({metric}) | "
                      f"{cfg.model.name_or_path} | {accelerator.device.type}, {accelerator.mixed_precision}, "
                      f"{accelerator.num_processes} process(es)")
    with lock.experiment_lock(out, accelerator), StopRequests(t.time_limit, accelerator) as stop:
        return _train_folds(cfg, df, tokenizer, metric, accelerator, out, on_eval, stop)


def _train_folds(cfg: Config, df: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, metric: str,
                 accelerator: Accelerator, out: Path, on_eval: EvalCallback | None,
                 stop: StopRequests) -> dict[str, Any]:
    d, t = cfg.data, cfg.train
    cols = config_mod.target_cols(cfg)
    _prepare_dir(cfg, out, accelerator)
    requested = t.folds if t.folds is not None else list(range(d.n_folds))
    if all(fold_complete(out / f"fold_{k}") for k in requested) and (out / "metrics.json").is_file():
        accelerator.print(f"{out} is already trained (set train.overwrite=true to retrain it)")
        summary = files.read_json(out / "metrics.json")
        print_summary(summary, accelerator, out)
        return summary
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        files.write_yaml(out / "config.yaml", cfg.to_dict())
    assignment = _fold_assignment(cfg, df, out, accelerator)

    input_ids, n_cut = data.tokenize(tokenizer, df[d.text_col].tolist(), t.max_len)  # once for all folds
    if n_cut:
        accelerator.print(f"{n_cut} of {len(df)} texts are longer than train.max_len={t.max_len} tokens and were truncated")
    y = df[cols].to_numpy(dtype=np.float32)
    extra = {"target_cols": cols, "max_len": t.max_len, "text_col": d.text_col, "id_col": d.id_col,
             "experiment": cfg.experiment}
    for k in requested:
        fold_dir = out / f"fold_{k}"
        if fold_complete(fold_dir):
            if accelerator.is_main_process:
                checkpoint.drop(fold_dir)  # left if a kill came between completing the fold and cleaning up
            accelerator.print(f"fold {k} is complete: kept")
            continue
        if accelerator.is_main_process and fold_dir.exists() and checkpoint.latest(fold_dir) is None:
            shutil.rmtree(fold_dir)  # an interrupted fold without a checkpoint restarts from scratch
        accelerator.wait_for_everyone()
        tr, va = np.flatnonzero(assignment != k), np.flatnonzero(assignment == k)
        result = train_fold(cfg, accelerator, k, tokenizer,
                            data.TokenizedDataset([input_ids[i] for i in tr], y[tr]),
                            data.TokenizedDataset([input_ids[i] for i in va], y[va]),
                            fold_dir, extra, on_eval, stop)
        if accelerator.is_main_process:
            _save_fold(fold_dir, result, df[d.id_col].iloc[va], y[va], cfg)
            checkpoint.drop(fold_dir)
        accelerator.wait_for_everyone()
    summary = summarize(cfg, out, metric) if accelerator.is_main_process else {}
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        summary = files.read_json(out / "metrics.json")
    print_summary(summary, accelerator, out)
    return summary
