import numpy as np

from bertreg import metrics


def test_rmse_and_mcrmse():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    p = y + np.array([[1.0, 0.0], [-1.0, 3.0], [1.0, 0.0]])
    assert np.isclose(metrics.score("rmse", y[:, 0], p[:, 0]), 1.0)
    assert np.isclose(metrics.score("mcrmse", y, p), (1.0 + np.sqrt(3.0)) / 2)
    assert metrics.default_metric(1) == "rmse" and metrics.default_metric(6) == "mcrmse"


def test_pearson_direction():
    y = np.arange(10.0)
    assert np.isclose(metrics.score("pearson", y, 2 * y + 1), 1.0)
    assert metrics.is_better("pearson", 0.9, 0.8) and metrics.is_better("rmse", 0.4, 0.5)
    assert not metrics.is_better("rmse", 0.6, 0.5)
