"""Scores: RMSE for one target, MCRMSE (the mean of per-column RMSEs) for several, Pearson as an option."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import root_mean_squared_error

GREATER_IS_BETTER = {"rmse": False, "mcrmse": False, "pearson": True}


def default_metric(n_targets: int) -> str:
    return "rmse" if n_targets == 1 else "mcrmse"


def _columns(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    return y.reshape(len(y), -1)


def per_column_rmse(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return root_mean_squared_error(_columns(y_true), _columns(y_pred), multioutput="raw_values")


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The metric over rows; with several targets RMSE is MCRMSE and Pearson is averaged over columns."""
    if metric in ("rmse", "mcrmse"):
        return float(per_column_rmse(y_true, y_pred).mean())
    if metric == "pearson":
        t, p = _columns(y_true), _columns(y_pred)
        return float(np.mean([pearsonr(t[:, j], p[:, j]).statistic for j in range(t.shape[1])]))
    raise ValueError(f"unknown metric {metric}")


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None:
        return True
    return new > best if GREATER_IS_BETTER[metric] else new < best
