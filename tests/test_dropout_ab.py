"""bench.py dropout-ab: both arms trained on the same fold, their curves summarised and drawn."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from bertreg.benchmarks import dropout_ab
from conftest import ROOT


def test_roughness_is_the_spread_of_step_to_step_changes():
    steady = np.linspace(1.0, 0.5, 10)
    zigzag = steady + 0.05 * (-1) ** np.arange(10)
    assert dropout_ab.roughness(steady) < 1e-12
    assert dropout_ab.roughness(zigzag) > 0.09


def test_both_arms_train_the_same_fold_and_differ_only_in_dropout(tiny_bert, demo_data, tmp_path, monkeypatch):
    out = tmp_path / "ab"
    monkeypatch.setattr(sys, "argv", [
        "bench.py dropout-ab", "--config", str(ROOT / "configs" / "dropout_ab.yaml"), "--rows", "120",
        "--model", str(tiny_bert), f"output_dir={out}", f"data.train_csv={demo_data / 'train.csv'}",
        "data.n_folds=3", "train.max_len=32", "train.eval_every=2", "train.mixed_precision=no"])
    dropout_ab.main()
    summary = json.loads((out / "dropout_ab.json").read_text())
    on, off = summary["arms"]
    assert (on["backbone_dropout"], off["backbone_dropout"]) == (0.1, 0.0)
    assert on["steps"] == off["steps"] and on["n_evals"] >= 3  # same fold, same budget
    for arm in (on, off):
        assert arm["best"] == min(arm["val_score"]) and arm["final"] == arm["val_score"][-1]
        assert np.isfinite(arm["roughness"])
    saved = [json.loads((out / f"dropout_ab_p{p}" / "fold_0" / "config.json").read_text()) for p in ("0.1", "0")]
    assert saved[0]["hidden_dropout_prob"] == 0.1 and saved[1]["hidden_dropout_prob"] == 0.0
    assert (out / "dropout_ab.png").stat().st_size > 0
    assert len(pd.read_csv(out / "train_rows120.csv")) == 120
