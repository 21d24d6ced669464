"""Weights across the runs of an ensemble: equal, given, or fitted on out-of-fold predictions.

`oof` finds the non-negative weights summing to 1 whose blend of the runs' OOF predictions has the
least squared error (scipy.optimize.nnls, the sum held to 1 by a heavily weighted extra row), each
target column divided by its standard deviation so that every column weighs alike, as in MCRMSE.
On the OOF rows that scaled squared error of the blend is thus never above the best single run's,
nor above equal weights'. The runs must share their folds (one folds.csv): then each row's OOF
predictions all come from models trained without that row's fold, and the runs' CVs compare fairly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from bertreg import metrics
from bertreg.cv import pred_cols
from bertreg.errors import UserError
from bertreg.runs import Run, read_fold_assignment, read_oof


@dataclass
class Blend:
    method: str  # equal | given | oof
    weights: np.ndarray  # one per run, summing to 1
    metric: str | None = None
    run_cv: list[float] = field(default_factory=list)  # each run's OOF score on the rows all runs share
    blend_cv: float | None = None
    n_oof: int = 0

    def to_dict(self, runs: list[Run]) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method,
                               "weights": {r.name: float(w) for r, w in zip(runs, self.weights)},
                               "runs": {r.name: {"path": str(r.path), "folds": r.folds} for r in runs}}
        if self.method == "oof":
            out.update(metric=self.metric, n_oof=self.n_oof, blend_cv=self.blend_cv,
                       run_cv={r.name: cv for r, cv in zip(runs, self.run_cv)})
        return out


def parse_weights(spec: str, n_runs: int) -> str | np.ndarray:
    """'equal', 'oof', or one non-negative number per run (rescaled to sum to 1)."""
    if spec in ("equal", "oof"):
        return spec
    try:
        values = np.array([float(x) for x in spec.split(",")])
    except ValueError:
        raise UserError(f"--weights must be equal, oof or one comma-separated number per run, got '{spec}'") from None
    if len(values) != n_runs:
        raise UserError(f"--weights gives {len(values)} numbers for {n_runs} runs")
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise UserError(f"--weights must be non-negative numbers with a positive sum, got '{spec}'")
    return values / values.sum()


def check_shared_folds(runs: list[Run]) -> None:
    first = read_fold_assignment(runs[0])
    for run in runs[1:]:
        if not read_fold_assignment(run).equals(first):
            raise UserError(f"--weights oof needs runs that share their folds, but {runs[0].path}/folds.csv and "
                            f"{run.path}/folds.csv differ: train with data.folds_csv={runs[0].path}/folds.csv")


def shared_oof(runs: list[Run]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The targets and each run's OOF predictions on the rows every run has an OOF prediction for."""
    check_shared_folds(runs)
    cols = runs[0].target_cols
    tables = [read_oof(r) for r in runs]
    for run, table in zip(runs, tables):
        missing = [c for c in [*cols, *pred_cols(cols)] if c not in table.columns]
        if missing:
            raise UserError(f"{run.path}/oof.csv has no column {', '.join(missing)}")
    ids = tables[0].index
    for table in tables[1:]:
        ids = ids.intersection(table.index, sort=False)
    if len(ids) == 0:
        raise UserError("the runs have no out-of-fold row in common: they were trained on different folds")
    y = tables[0].loc[ids, cols].to_numpy(dtype=float)
    return y, [t.loc[ids, pred_cols(cols)].to_numpy(dtype=float) for t in tables]


def nnls_weights(y: np.ndarray, preds: list[np.ndarray]) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the column-scaled squared error of the blend."""
    scale = y.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    design = np.stack([(p / scale).ravel() for p in preds], axis=1)
    target = (y / scale).ravel()
    # a row of ones weighted far above the data: the fit can move off sum(w) = 1 by about 1e-4 only
    penalty = 100.0 * np.sqrt(len(target)) * max(np.abs(design).max(), 1.0)
    weights, _ = nnls(np.vstack([design, np.full(len(preds), penalty)]), np.append(target, penalty))
    return weights / weights.sum()


def combine(preds: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, preds))


def resolve(spec: str, runs: list[Run]) -> Blend:
    """The blend the --weights spec asks for; for `oof`, fitted and scored on the runs' OOF predictions."""
    parsed = parse_weights(spec, len(runs))
    if isinstance(parsed, np.ndarray):
        return Blend("given", parsed)
    if parsed == "equal":
        return Blend("equal", np.full(len(runs), 1.0 / len(runs)))
    y, preds = shared_oof(runs)
    weights = nnls_weights(y, preds)
    metric = runs[0].metric
    return Blend("oof", weights, metric, [metrics.score(metric, y, p) for p in preds],
                 metrics.score(metric, y, combine(preds, weights)), len(y))
