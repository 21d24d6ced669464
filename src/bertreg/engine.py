"""The training loop of one fold, and batched prediction, on one Accelerator.

Shaped after accelerate's cross_validation example: a fresh model, optimizer and scheduler per
fold, gradient accumulation through `accelerator.accumulate`, predictions gathered with
`gather_for_metrics` so that under N processes every validation row gets exactly one prediction.
The inner loop keeps the loss on the device: the host waits for the device only at evaluations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from bertreg import checkpoint, metrics
from bertreg.config import Config
from bertreg.data import Collator, LengthGroupedBatchSampler, TokenizedDataset, sorted_batches
from bertreg.errors import UserError
from bertreg.model import build_model, compile_failure, save_fold_model
from bertreg.optim import make_optimizer, make_scheduler
from bertreg.stopping import StopRequests, interrupted

# Called after every evaluation with (step, score); the tuner reports to Optuna here and may
# raise optuna.TrialPruned to stop the fold.
EvalCallback = Callable[[int, float], None]
# Called after every optimizer step with the step number; may raise to stop the fold (the throughput
# benchmark times steps here and stops after its last timed step).
StepCallback = Callable[[int], None]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the fold stops and no model of it is saved."""


@dataclass
class FoldResult:
    fold: int
    score: float
    best_step: int
    val_pred: np.ndarray  # the best evaluation's predictions, in target units, one row per validation row
    history: list[dict[str, Any]] = field(default_factory=list)


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # each takes the error in standard deviations of the target
    "mse": lambda e: e.pow(2).mean(),
    "rmse": lambda e: e.pow(2).mean(dim=0).add(1e-8).sqrt().mean(),  # MCRMSE itself, per column
    "smooth_l1": lambda e: torch.nn.functional.smooth_l1_loss(e, torch.zeros_like(e)),
    "l1": lambda e: e.abs().mean(),
}


def predict(model: torch.nn.Module, dataset: TokenizedDataset, batch_size: int, accelerator: Accelerator,
            collate: Collator, progress: str | None = None) -> np.ndarray:
    """Predictions for every row of `dataset` in its own order, in length-sorted batches."""
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_sampler=sorted_batches(dataset.lengths, batch_size), collate_fn=collate))
    out: np.ndarray | None = None
    seen = np.zeros(len(dataset), dtype=bool)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=progress, disable=progress is None or not accelerator.is_main_process,
                          leave=False):
            pred = model(batch["input_ids"], batch["attention_mask"]).float()
            # Length-sorted batches differ in size between processes, which tensor gathers refuse;
            # gathered as objects, each process's batch arrives whole. Rows that accelerate repeats
            # to even out the shards land on their own index again, so each row keeps one prediction.
            for pred_np, idx in accelerator.gather_for_metrics([(pred.cpu().numpy(), batch["idx"].cpu().numpy())],
                                                               use_gather_object=True):
                if out is None:
                    out = np.empty((len(dataset), pred_np.shape[1]), dtype=np.float64)
                out[idx] = pred_np  # placing by row index restores the input order
                seen[idx] = True
    model.train(was_training)
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} rows got no prediction")
    return out


def train_fold(cfg: Config, accelerator: Accelerator, fold: int, tokenizer: PreTrainedTokenizerBase,
               train_ds: TokenizedDataset, val_ds: TokenizedDataset, fold_dir: Path, extra: dict[str, Any],
               on_eval: EvalCallback | None = None, stop: StopRequests | None = None,
               on_step: StepCallback | None = None) -> FoldResult:
    """Fine-tune a fresh model on one fold; keep only its best checkpoint (by the validation metric) in fold_dir.

    Resumes from the fold's latest mid-fold checkpoint when there is one; with train.checkpoint_every
    saves one every so many steps, and on a stop request saves one and raises Interrupted.
    """
    t = cfg.train
    metric = t.metric or metrics.default_metric(train_ds.targets.shape[1])
    set_seed(cfg.seed + fold)  # per-fold seed: a fold trains the same alone or after others
    y = train_ds.targets
    std = y.std(axis=0) if cfg.data.standardize_targets else np.ones(y.shape[1])
    model = build_model(
        cfg.model.name_or_path, y.shape[1], cfg.model.pooling, cfg.model.head_dropout,
        cfg.model.backbone_dropout, cfg.model.reinit_layers,
        target_mean=y.mean(axis=0), target_std=np.where(std > 0, std, 1.0),
        gradient_checkpointing=cfg.model.gradient_checkpointing)
    optimizer = make_optimizer(model, t.lr, t.head_lr, t.layerwise_lr_decay, t.weight_decay,
                               fused=accelerator.device.type in ("cuda", "cpu"))
    collate = Collator(tokenizer.pad_token_id, t.pad_to_multiple_of)
    sampler = LengthGroupedBatchSampler(train_ds.lengths, t.batch_size, seed=cfg.seed + fold,
                                        group_by_length=t.length_grouping)
    train_loader = DataLoader(train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=t.num_workers)
    if t.compile:
        model = torch.compile(model, dynamic=True)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    # counted in this process's optimizer steps (accelerate shards the batches over the processes);
    # the scheduler is stepped by hand once per optimizer step, so it is not prepared
    steps_per_epoch = max(1, math.ceil(len(train_loader) / t.grad_accum))
    total_steps = steps_per_epoch * t.epochs
    scheduler = make_scheduler(optimizer, t.scheduler, t.warmup, total_steps)
    loss_fn = LOSSES[t.loss]
    eval_bs = t.eval_batch_size or 2 * t.batch_size

    history: list[dict[str, Any]] = []
    best: float | None = None
    best_step, best_pred, stale = 0, None, 0
    running, seen_batches, step = torch.zeros((), device=accelerator.device), 0, 0
    start_epoch, start_batch = 0, 0
    resume_from = checkpoint.latest(fold_dir)
    if resume_from is not None:
        state = checkpoint.load(accelerator, resume_from, scheduler, fold_dir)
        step, start_epoch, start_batch, stale = state["step"], state["epoch"], state["batches_done"], state["stale"]
        history, best, best_step = state["history"], state["best"], state["best_step"]
        best_pred = None if state["best_pred"] is None else np.asarray(state["best_pred"], dtype=np.float64)
        running = torch.tensor(state["running_loss"], device=accelerator.device)
        seen_batches = state["seen_batches"]
        accelerator.print(f"fold {fold}: resuming from {resume_from} (step {step}/{total_steps})")
    bar = tqdm(total=total_steps, initial=step, desc=f"fold {fold}", disable=not accelerator.is_main_process,
               dynamic_ncols=True)
    started = time.perf_counter()

    def evaluate(epoch: float) -> bool:
        """Score the fold's validation rows; returns False when early stopping says stop."""
        nonlocal best, best_step, best_pred, stale, running, seen_batches
        train_loss = (running / max(seen_batches, 1)).item()
        lr = scheduler.get_last_lr()[0]
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"fold {fold}: the training loss became {train_loss} by step {step} "
                                   f"(lr {lr:.3g}); no model of this fold was saved: lower train.lr")
        running, seen_batches = torch.zeros((), device=accelerator.device), 0
        pred = predict(model, val_ds, eval_bs, accelerator, collate)
        if not np.isfinite(pred).all():
            raise TrainingDiverged(f"fold {fold}: predictions became NaN or infinite at step {step} "
                                   f"(lr {lr:.3g}); no model of this fold was saved: lower train.lr")
        score = metrics.score(metric, val_ds.targets, pred)
        improved = metrics.is_better(metric, score, best)
        if improved:
            best, best_step, best_pred, stale = score, step, pred, 0
            if accelerator.is_main_process:
                save_fold_model(accelerator.unwrap_model(model), tokenizer, fold_dir,
                                {**extra, "fold": fold, "best_step": step, "metric": metric})
        else:
            stale += 1
        history.append({"step": step, "epoch": round(epoch, 4), "train_loss": train_loss,
                        "val_score": score, "lr": lr})
        if accelerator.is_main_process:
            bar.write(f"fold {fold} | step {step:>5}/{total_steps} | epoch {epoch:5.2f} | train_loss {train_loss:.4f} "
                      f"| val {metric} {score:.4f}{' *' if improved else ''} (best {best:.4f} @ {best_step}) "
                      f"| {time.perf_counter() - started:.0f}s")
        if on_eval is not None:
            on_eval(step, score)
        return not (t.patience and stale >= t.patience)

    def save_checkpoint(epoch: int, batches_done: int) -> Path:
        """The whole state after this step, once it is known to be finite: no NaN model is ever saved."""
        loss = accelerator.reduce(running.detach().clone(), "sum").item()
        finite = math.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
        if not finite:
            raise TrainingDiverged(f"fold {fold}: the training loss or the weights became NaN or infinite by "
                                   f"step {step} (lr {scheduler.get_last_lr()[0]:.3g}); this state was not saved: "
                                   f"lower train.lr")
        state = {"step": step, "epoch": epoch, "batches_done": batches_done, "stale": stale, "history": history,
                 "best": best, "best_step": best_step, "best_pred": None if best_pred is None else best_pred.tolist(),
                 "running_loss": running.item(), "seen_batches": seen_batches}
        return checkpoint.save(accelerator, fold_dir, step, state, scheduler, t.keep_checkpoints)

    model.train()
    go_on = True
    if stop is not None:
        stop.restart_clock()
    try:  # the bar is closed however the fold ends: done, pruned by the tuner, stopped, diverged
        for epoch in range(start_epoch, t.epochs):
            # accelerate re-seeds the sampler from its own epoch count in one process: keep both in step
            train_loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            skip = start_batch if epoch == start_epoch else 0
            batches = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            for i, batch in enumerate(batches, start=skip):
                with accelerator.accumulate(model):
                    pred = model(batch["input_ids"], batch["attention_mask"])
                    loss = loss_fn((pred - batch["labels"]) / model_std(model))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                running += loss.detach()
                seen_batches += 1
                if not accelerator.sync_gradients:
                    continue
                if not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                step += 1
                bar.update(1)
                if on_step is not None:
                    on_step(step)
                if t.eval_every and step % t.eval_every == 0 and i + 1 < len(train_loader):
                    if not (go_on := evaluate(epoch + (i + 1) / len(train_loader))):
                        break
                reason = stop.poll() if stop is not None else None
                if reason or (t.checkpoint_every and step % t.checkpoint_every == 0):
                    saved = save_checkpoint(epoch, i + 1)
                    if reason:
                        raise interrupted(reason, f"fold {fold} stopped at step {step}/{total_steps}, its state saved "
                                                  f"in {saved}; run the same command again to resume")
            if not go_on or not evaluate(epoch + 1.0):
                break
    except torch._dynamo.exc.BackendCompilerFailed as err:  # train.compile, on a machine that cannot
        raise compile_failure(err, "train with train.compile=false") from None
    finally:
        bar.close()
    accelerator.wait_for_everyone()
    result = FoldResult(fold, float(best), best_step, best_pred, history)
    # release this fold's model and optimizer before the next fold builds its own
    del model, optimizer, train_loader
    accelerator.free_memory()
    return result


def model_std(model: torch.nn.Module) -> torch.Tensor:
    """The target scale the loss is measured in, through any wrapper (DDP, torch.compile)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return inner.target_std
