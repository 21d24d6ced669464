"""A finished training run, read back from its folder for inference, blending and export.

A run folder is what `bertreg.cv.run` writes: config.yaml, folds.csv, oof.csv, metrics.json
and fold_<k>/. Only complete folds (metrics.json, model weights and head settings present) count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bertreg import config, data, files, metrics
from bertreg.config import Config
from bertreg.cv import fold_complete
from bertreg.errors import UserError
from bertreg.model import HEAD_FILE

WEIGHTS_FILE = "model.safetensors"


@dataclass
class Run:
    path: Path
    name: str  # unique among the runs of one ensemble: names its columns and its folder in an export
    cfg: Config
    folds: list[int]  # the complete folds used, ascending

    @property
    def target_cols(self) -> list[str]:
        return config.target_cols(self.cfg)

    @property
    def id_col(self) -> str:
        return self.cfg.data.id_col

    @property
    def metric(self) -> str:
        return self.cfg.train.metric or metrics.default_metric(len(self.target_cols))

    @property
    def cv(self) -> float | None:
        """The CV score training recorded in metrics.json (None if the run has no summary)."""
        summary = self.path / "metrics.json"
        return files.read_json(summary).get("cv") if summary.is_file() else None

    def fold_dir(self, k: int) -> Path:
        return self.path / f"fold_{k}"


def fold_ready(fold_dir: Path) -> bool:
    return fold_complete(fold_dir) and (fold_dir / WEIGHTS_FILE).is_file() and (fold_dir / HEAD_FILE).is_file()


def load_run(path: str | Path) -> Run:
    """A run folder with at least one complete fold; one clear line when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a run folder: it has no config.yaml (give {{output_dir}}/{{experiment}}/ of a training run)")
    cfg = config.build(config.read_yaml(path / "config.yaml"))
    done = [k for k in range(cfg.data.n_folds) if fold_ready(path / f"fold_{k}")]
    if not done:
        raise UserError(f"run {path} has no complete fold (fold_<k>/ with metrics.json and {WEIGHTS_FILE}): "
                        f"finish its training first")
    return Run(path, path.name, cfg, done)


def load_runs(paths: list[str | Path]) -> list[Run]:
    """The runs of one ensemble: they must predict the same targets under the same id column."""
    if not paths:
        raise UserError("no run folder given")
    runs = [load_run(p) for p in paths]
    for run, name in zip(runs, unique_names([r.path for r in runs])):
        run.name = name
    first = runs[0]
    for run in runs[1:]:
        if run.target_cols != first.target_cols:
            raise UserError(f"runs predict different target columns: {first.path} predicts {first.target_cols}, "
                            f"{run.path} predicts {run.target_cols}")
        if run.id_col != first.id_col:
            raise UserError(f"runs use different id columns: '{first.id_col}' in {first.path}, '{run.id_col}' in {run.path}")
    return runs


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names, with _2, _3... appended where two runs share one (runs/x/demo and runs/y/demo)."""
    counts = Counter(p.name for p in paths)
    seen: Counter[str] = Counter()
    names = []
    for p in paths:
        seen[p.name] += 1
        names.append(p.name if counts[p.name] == 1 or seen[p.name] == 1 else f"{p.name}_{seen[p.name]}")
    return names


def select_folds(runs: list[Run], folds: list[int] | None) -> None:
    """Keep only the requested folds of each run; each must be complete in every run."""
    if folds is None:
        return
    for run in runs:
        missing = [k for k in folds if k not in run.folds]
        if missing:
            raise UserError(f"fold {missing[0]} is not a complete fold of {run.path} "
                            f"(its complete folds: {', '.join(map(str, run.folds))})")
        run.folds = sorted(set(folds))


def read_oof(run: Run) -> pd.DataFrame:
    """The run's out-of-fold table (id, fold, targets, predictions)."""
    path = run.path / "oof.csv"
    table = data.read_csv(path, f"out-of-fold predictions of {run.path}", run.id_col)
    return table.set_index(run.id_col)


def read_fold_assignment(run: Run) -> pd.Series:
    path = run.path / "folds.csv"
    table = data.read_csv(path, f"fold assignment of {run.path}", run.id_col)
    return table.set_index(run.id_col)["fold"].sort_index()
