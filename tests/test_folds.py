"""Folds: stratified on the binned target, grouped when asked, deterministic, or read from a file."""

import numpy as np
import pandas as pd
import pytest

from bertreg import folds
from bertreg.errors import UserError


def frame(n=500, seed=0, targets=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "group": rng.integers(0, 40, n)})
    for j in range(targets):
        df[f"t{j}"] = rng.normal(size=n) ** 3  # skewed: plain KFold would put the tails unevenly
    return df


def test_same_seed_same_folds_other_seed_other_folds():
    df = frame()
    a = folds.make_folds(df, ["t0"], 5, seed=1)
    assert np.array_equal(a, folds.make_folds(df, ["t0"], 5, seed=1))
    assert not np.array_equal(a, folds.make_folds(df, ["t0"], 5, seed=2))
    assert sorted(np.bincount(a)) == [100] * 5


def test_every_fold_spans_the_target_range():
    df = frame()
    assign = folds.make_folds(df, ["t0"], 5, seed=0)
    bins = folds.target_bins(df["t0"].to_numpy(), 5)
    for b in np.unique(bins):  # each bin is spread over the folds to within one row
        counts = np.bincount(assign[bins == b], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_several_targets_stratify_on_their_mean():
    df = frame(targets=3)
    cols = ["t0", "t1", "t2"]
    assign = folds.make_folds(df, cols, 4, seed=0)
    bins = folds.target_bins(df[cols].to_numpy(), 4)
    assert np.array_equal(bins, folds.target_bins(df[cols].mean(axis=1).to_numpy(), 4))
    for b in np.unique(bins):
        counts = np.bincount(assign[bins == b], minlength=4)
        assert counts.max() - counts.min() <= 1


def test_sturges_rule():
    assert folds.sturges_bins(2834) == 12
    assert folds.sturges_bins(8) == 4


def test_groups_stay_in_one_fold():
    df = frame()
    assign = folds.make_folds(df, ["t0"], 5, seed=0, group_col="group")
    assert df.assign(fold=assign).groupby("group")["fold"].nunique().max() == 1
    assert set(assign) == set(range(5))


def test_folds_csv_is_used_and_checked(tmp_path):
    df = frame(n=20)
    given = pd.DataFrame({"id": df["id"][::-1], "fold": np.arange(20)[::-1] % 2})
    given.to_csv(tmp_path / "f.csv", index=False)
    assign = folds.read_folds(tmp_path / "f.csv", df["id"], "id", 2)
    assert list(assign) == [i % 2 for i in range(20)]
    given.iloc[:-3].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(UserError, match="no fold for 3 training ids"):
        folds.read_folds(tmp_path / "short.csv", df["id"], "id", 2)
    with pytest.raises(UserError, match="outside 0..0"):
        folds.read_folds(tmp_path / "f.csv", df["id"], "id", 1)
