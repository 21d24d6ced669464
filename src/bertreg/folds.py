"""Where folds are made: stratified on the binned target, grouped when asked, or read from a file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedKFold

from bertreg.data import read_csv, require_columns
from bertreg.errors import UserError


def sturges_bins(n: int) -> int:
    """Sturges' rule: 1 + log2(n) bins."""
    return int(math.floor(1 + math.log2(n)))


def target_bins(y: np.ndarray, n_folds: int) -> np.ndarray:
    """Equal-width bins of the target (the mean of the targets when there are several).

    Sturges' rule sets the count; it is lowered until every bin holds at least n_folds rows,
    which StratifiedKFold needs to put a member of each bin into each fold.
    """
    y = np.asarray(y, dtype=float)
    score = y.mean(axis=1) if y.ndim == 2 else y
    for n_bins in range(sturges_bins(len(score)), 0, -1):
        edges = np.linspace(score.min(), score.max(), n_bins + 1)[1:-1]
        bins = np.digitize(score, edges)
        if np.bincount(bins).min(initial=len(score)) >= n_folds or n_bins == 1:
            return bins
    return np.zeros(len(score), dtype=int)


def make_folds(df: pd.DataFrame, target_cols: Sequence[str], n_folds: int, seed: int,
               group_col: str | None = None) -> np.ndarray:
    """The fold (0..n_folds-1) of every row; the same data and seed always give the same folds."""
    folds = np.full(len(df), -1, dtype=int)
    if group_col:
        groups = df[group_col].astype(str).to_numpy()
        if len(set(groups)) < n_folds:
            raise UserError(f"data.group_col '{group_col}' has {len(set(groups))} groups, fewer than data.n_folds={n_folds}")
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(df, groups=groups)
    else:
        bins = target_bins(df[list(target_cols)].to_numpy(), n_folds)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(df)), bins)
    for k, (_, val) in enumerate(splits):
        folds[val] = k
    return folds


def read_folds(path: str | Path, ids: pd.Series, id_col: str, n_folds: int) -> np.ndarray:
    """A given fold assignment (id, fold): it must cover every training id with a fold in 0..n_folds-1."""
    table = read_csv(path, "folds CSV", id_col)
    require_columns(table, [id_col, "fold"], "folds CSV")
    table = table.drop_duplicates(id_col).set_index(id_col)["fold"]
    missing = ids[~ids.isin(table.index)].tolist()
    if missing:
        raise UserError(f"folds CSV {path} has no fold for {len(missing)} training ids: {', '.join(missing[:5])}")
    folds = pd.to_numeric(table.reindex(ids), errors="coerce").to_numpy()
    bad = ~np.isin(folds, np.arange(n_folds))
    if bad.any():
        raise UserError(f"folds CSV {path} has folds outside 0..{n_folds - 1} (ids {', '.join(ids[bad].tolist()[:5])})")
    return folds.astype(int)
