"""Mid-fold checkpoints: a fold's whole training state on disk, so a killed run resumes where it was.

fold_<k>/checkpoints/step_<n>/ holds accelerate's `save_state` (model, optimizer, the RNG of every
process), the scheduler, the loop's own state (loop_<process>.json: step, epoch, batches done,
best score and predictions, history, early-stopping count) and best/: hard links to the fold's best
model files as they were at step n. The links matter because an improvement saved after the
checkpoint must not survive a resume from before it.

A checkpoint is built in a hidden folder and renamed into place, so a folder named step_<n> is
always whole; the newest `keep` are kept, and cv.run deletes them all once the fold is complete.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from bertreg import files
from bertreg.errors import UserError

CHECKPOINTS = "checkpoints"
_PREFIX = "step_"


def _step(path: Path) -> int:
    return int(path.name[len(_PREFIX):])


def saved(fold_dir: Path) -> list[Path]:
    """The fold's whole checkpoints, oldest first (half-built ones are hidden folders, not listed)."""
    root = fold_dir / CHECKPOINTS
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir()] if root.is_dir() else []
    return sorted(found, key=_step)


def latest(fold_dir: Path) -> Path | None:
    found = saved(fold_dir)
    return found[-1] if found else None


def drop(fold_dir: Path) -> None:
    shutil.rmtree(fold_dir / CHECKPOINTS, ignore_errors=True)


def _link(src: Path, dst: Path) -> None:
    """Hard-link (free, and immune to the atomic replace of src later); copy where links are refused."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _model_files(fold_dir: Path) -> list[Path]:
    return [p for p in fold_dir.iterdir() if p.is_file() and not p.name.startswith(".")]


def save(accelerator: Accelerator, fold_dir: Path, step: int, loop_state: dict[str, Any],
         scheduler: Any, keep: int) -> Path:
    """Write checkpoint step_<step> of the fold (every process calls this) and prune to the newest `keep`."""
    root = fold_dir / CHECKPOINTS
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill during an earlier save
        (tmp / "best").mkdir(parents=True)
        for f in _model_files(fold_dir):
            _link(f, tmp / "best" / f.name)
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    files.write_json(tmp / f"loop_{accelerator.process_index}.json",
                     {**loop_state, "num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in saved(fold_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(accelerator: Accelerator, ckpt: Path, scheduler: Any, fold_dir: Path) -> dict[str, Any]:
    """Restore model, optimizer, RNG, scheduler and the fold's best model files; return the loop's state."""
    n = files.read_json(ckpt / "loop_0.json")["num_processes"]
    if n != accelerator.num_processes:
        raise UserError(f"{ckpt} was saved by {n} processes; resume it with {n} processes "
                        f"(it now runs with {accelerator.num_processes}), or delete {ckpt.parent} to restart the fold")
    state = files.read_json(ckpt / f"loop_{accelerator.process_index}.json")
    accelerator.load_state(str(ckpt))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    if accelerator.is_main_process:
        _restore_best(ckpt / "best", fold_dir)
    accelerator.wait_for_everyone()
    return state


def _restore_best(best: Path, fold_dir: Path) -> None:
    """Make the fold's model files those of the checkpoint, each file replaced atomically."""
    keep = {p.name for p in best.iterdir()}
    for f in _model_files(fold_dir):
        if f.name not in keep:
            f.unlink()
    for src in best.iterdir():
        tmp = fold_dir / f".{src.name}.restore"
        tmp.unlink(missing_ok=True)
        _link(src, tmp)
        os.replace(tmp, fold_dir / src.name)
