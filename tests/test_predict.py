"""src/predict.py: fold-ensemble submissions, OOF-fitted blend weights, and every bad input refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, no_compiler, run_script, the_error_line

from bertreg import blend, inference, metrics
from bertreg.errors import UserError


def read_ids(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


@pytest.fixture(scope="session")
def tiny_run(demo_run, demo_data, tiny_bert, tmp_path_factory) -> Path:
    """A second run, a tiny random BERT on demo_run's folds: a weak model to blend with the MiniLM one."""
    out = tmp_path_factory.mktemp("tiny_runs")
    res = run_script("train.py", "--config", str(ROOT / "configs" / "demo.yaml"), "experiment=tiny",
                     f"output_dir={out}", f"model.name_or_path={tiny_bert}",
                     f"data.train_csv={demo_data / 'train.csv'}", f"data.test_csv={demo_data / 'test.csv'}",
                     f"data.sample_submission={demo_data / 'sample_submission.csv'}",
                     f"data.folds_csv={demo_run / 'folds.csv'}", "data.n_folds=2", "train.epochs=1",
                     "train.max_len=64", "train.mixed_precision=no")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "tiny"


def fold_rows(demo_run: Path, demo_data: Path, k: int, path: Path) -> Path:
    """fold k's validation rows of the demo training data, as a test CSV (id, excerpt)."""
    train = read_ids(demo_data / "train.csv")
    folds = read_ids(demo_run / "folds.csv")
    train[train["id"].isin(folds.loc[folds["fold"] == k, "id"])][["id", "excerpt"]].to_csv(path, index=False)
    return path


def test_fold_k_on_its_validation_rows_reproduces_oof(demo_run, demo_data, tmp_path):
    test = fold_rows(demo_run, demo_data, 1, tmp_path / "val1.csv")
    out = tmp_path / "sub.csv"
    res = run_script("predict.py", "--runs", str(demo_run), "--folds", "1", "--test", str(test), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    sub = read_ids(out)
    assert list(sub.columns) == ["id", "target"]  # no sample with --test alone: the test's order
    assert sub["id"].tolist() == read_ids(test)["id"].tolist()
    oof = read_ids(demo_run / "oof.csv").set_index("id")
    np.testing.assert_allclose(sub["target"], oof.loc[sub["id"], "pred"], atol=1e-3)


def test_two_runs_blend_with_oof_weights(demo_run, tiny_run, demo_data, tmp_path):
    out = tmp_path / "subs" / "submission.csv"
    res = run_script("predict.py", "--runs", str(demo_run), str(tiny_run), "--weights", "oof", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]

    sample = read_ids(demo_data / "sample_submission.csv")
    sub = read_ids(out)
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    assert np.isfinite(sub["target"]).all()

    parts = read_ids(tmp_path / "subs" / "submission_parts.csv")
    assert parts["id"].tolist() == sub["id"].tolist()
    for run in ("demo", "tiny"):
        folds = parts[[f"{run}/fold_0/target", f"{run}/fold_1/target"]]
        np.testing.assert_allclose(parts[f"{run}/target"], folds.mean(axis=1), atol=1e-9)
    info = json.loads((tmp_path / "subs" / "submission_weights.json").read_text())
    w = info["weights"]
    assert info["method"] == "oof" and min(w.values()) >= 0 and sum(w.values()) == pytest.approx(1)
    np.testing.assert_allclose(sub["target"], w["demo"] * parts["demo/target"] + w["tiny"] * parts["tiny/target"],
                               atol=1e-9)

    # the fitted blend is the best weighted average on the OOF rows: never worse than a run alone or equal weights
    oofs = [read_ids(r / "oof.csv").set_index("id").sort_index() for r in (demo_run, tiny_run)]
    y, preds = oofs[0]["target"].to_numpy(), [o["pred"].to_numpy() for o in oofs]
    blended = metrics.score("rmse", y, w["demo"] * preds[0] + w["tiny"] * preds[1])
    assert info["blend_cv"] == pytest.approx(blended)
    singles = [metrics.score("rmse", y, p) for p in preds]
    assert blended <= min(singles) + 1e-6
    assert blended <= metrics.score("rmse", y, (preds[0] + preds[1]) / 2) + 1e-6
    for run, cv in zip(("demo", "tiny"), singles):
        assert f"OOF rmse {cv:.4f}" in res.stdout and run in res.stdout
    assert f"OOF rmse {blended:.4f}" in res.stdout


def test_compiled_inference_predicts_what_eager_does_for_every_fold(tiny_run, tmp_path):
    """--compile freezes each fold's weights into its graph: every fold must get its own, none a stale one."""
    parts = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name / "submission.csv"
        res = run_script("predict.py", "--runs", str(tiny_run), "--out", str(out), *flags)
        assert res.returncode == 0, res.stderr[-3000:]
        parts[name] = read_ids(tmp_path / name / "submission_parts.csv").set_index("id")
    eager, compiled = parts["eager"], parts["compiled"]
    folds = ["tiny/fold_0/target", "tiny/fold_1/target"]
    assert np.abs(eager[folds[0]] - eager[folds[1]]).max() > 1e-3  # the folds differ, so a stale fold would show
    np.testing.assert_allclose(compiled[folds], eager[folds], rtol=1e-4, atol=1e-4)


def test_compile_that_cannot_compile_is_one_line_and_exit_2(tiny_run, tmp_path):
    res = run_script("predict.py", "--runs", str(tiny_run), "--out", str(tmp_path / "sub.csv"), "--compile",
                     env=no_compiler(tmp_path))
    error = the_error_line(res)
    assert "predict without --compile" in error and "/nonexistent/c++" in error
    assert not (tmp_path / "sub.csv").exists()


def test_the_test_set_is_tokenized_once_per_run_not_per_fold(demo_run, tiny_run, tmp_path, monkeypatch):
    from bertreg import data

    calls, tokenize = [], data.tokenize

    def counting(tokenizer, texts, max_len):
        calls.append(max_len)
        return tokenize(tokenizer, texts, max_len)

    monkeypatch.setattr(data, "tokenize", counting)
    sub = inference.make_submission([demo_run, tiny_run], out=tmp_path / "submission.csv")
    assert len(calls) == 2  # two runs of two folds each
    parts = read_ids(tmp_path / "submission_parts.csv")
    assert np.isfinite(sub["target"]).all() and len(parts) == len(sub)
    for run in ("demo", "tiny"):  # every fold still predicted with its own model
        assert np.abs(parts[f"{run}/fold_0/target"] - parts[f"{run}/fold_1/target"]).max() > 1e-4


def test_given_weights_are_rescaled_to_sum_to_one():
    np.testing.assert_allclose(blend.parse_weights("1,3", 2), [0.25, 0.75])
    assert blend.parse_weights("equal", 3) == "equal"
    for spec, message in [("1,x", "one comma-separated number per run"), ("1,2,3", "3 numbers for 2 runs"),
                          ("-1,2", "non-negative"), ("0,0", "positive sum"), ("nan,1", "non-negative")]:
        with pytest.raises(UserError, match=message):
            blend.parse_weights(spec, 2)


def test_oof_weights_favour_the_better_of_two_runs():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 2)) * [1.0, 10.0]  # two targets on different scales weigh alike
    good, bad = y + 0.3 * rng.normal(size=y.shape) * [1, 10], y + 0.6 * rng.normal(size=y.shape) * [1, 10]
    w = blend.nnls_weights(y, [good, bad])
    assert w.sum() == pytest.approx(1) and w[0] > 0.7 > 0.3 > w[1] > 0  # the optimum is 0.8 / 0.2
    score = lambda p: metrics.score("mcrmse", y, p)  # noqa: E731
    assert score(blend.combine([good, bad], w)) < score(good) < score(bad)


def test_submission_takes_the_sample_columns_and_row_order_with_several_targets():
    test = pd.DataFrame({"id": ["a", "b", "c"], "excerpt": ["x", "y", "z"]})
    sample = pd.DataFrame({"content": 0.0, "id": ["c", "a", "b"], "wording": 0.0})
    pred = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # test order; columns as the runs' target_cols
    sub = inference.build_submission(test, pred, "id", ["wording", "content"], sample)
    assert list(sub.columns) == ["content", "id", "wording"] and sub["id"].tolist() == ["c", "a", "b"]
    assert sub["wording"].tolist() == [3.0, 1.0, 2.0] and sub["content"].tolist() == [30.0, 10.0, 20.0]


def test_submission_is_never_written_with_nan():
    test = pd.DataFrame({"id": ["a", "b"], "excerpt": ["x", "y"]})
    with pytest.raises(UserError, match="NaN or infinite"):
        inference.build_submission(test, np.array([[0.1], [np.nan]]), "id", ["target"], None)


# ---- bad inputs: each is one clear line (a UserError), before any model runs, and nothing is written

def symlinked_copy(run: Path, dst: Path) -> Path:
    """A copy of a run whose files are links: editing one (an atomic replace) leaves the original alone."""
    shutil.copytree(run, dst, copy_function=os.symlink)
    return dst


def edit_config(run: Path, key: str, value) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, leaf = key.split(".")
    cfg[section][leaf] = value
    (run / "config.yaml").unlink()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def bad_case(name: str, demo_run: Path, demo_data: Path, tmp: Path) -> dict:
    test = read_ids(demo_data / "test.csv")
    sample = read_ids(demo_data / "sample_submission.csv")
    if name == "no complete fold":
        run = symlinked_copy(demo_run, tmp / "unfinished")
        for k in (0, 1):
            (run / f"fold_{k}" / "metrics.json").unlink()  # a fold is complete once metrics.json is there
        return {"runs": [run]}
    if name == "different targets":
        other = symlinked_copy(demo_run, tmp / "other")
        edit_config(other, "data.target_cols", ["difficulty"])
        return {"runs": [demo_run, other]}
    if name == "test without id column":
        return {"test": write_csv(tmp / "t.csv", test.rename(columns={"id": "key"}))}
    if name == "test without text column":
        return {"test": write_csv(tmp / "t.csv", test.drop(columns="excerpt"))}
    if name == "duplicate test ids":
        return {"test": write_csv(tmp / "t.csv", pd.concat([test, test.head(2)]))}
    if name == "empty test file":
        (tmp / "t.csv").write_text("")
        return {"test": tmp / "t.csv"}
    if name == "test with a header only":
        (tmp / "t.csv").write_text("id,excerpt\n")
        return {"test": tmp / "t.csv"}
    if name == "sample ids differ":
        changed = sample.copy()
        changed.loc[0, "id"] = "not-a-test-id"
        return {"test": demo_data / "test.csv", "sample": write_csv(tmp / "s.csv", changed)}
    if name == "fold not trained":
        return {"folds": [0, 5]}
    if name == "weights count":
        return {"weights": "0.5,0.3,0.2"}
    if name == "oof weights on other folds":
        other = symlinked_copy(demo_run, tmp / "refolded")
        folds = read_ids(demo_run / "folds.csv")
        (other / "folds.csv").unlink()
        write_csv(other / "folds.csv", folds.assign(fold=1 - folds["fold"]))
        return {"runs": [demo_run, other], "weights": "oof"}
    raise ValueError(name)


BAD_INPUTS = {
    "no complete fold": r"unfinished has no complete fold",
    "different targets": r"different target columns: .*\['target'\].*\['difficulty'\]",
    "test without id column": r"test CSV has no column id",
    "test without text column": r"test CSV has no column excerpt",
    "duplicate test ids": r"test CSV has duplicate ids in column 'id': demo02_00000, demo02_00001",
    "empty test file": r"test CSV is empty: .*t\.csv",
    "test with a header only": r"test CSV has no rows: .*t\.csv",
    "sample ids differ": r"sample submission .*s\.csv ids differ from the test CSV's: 1 test ids are not in it "
                         r"\(demo02_00000\), 1 of its ids are not in the test \(not-a-test-id\)",
    "fold not trained": r"fold 5 is not a complete fold of .* \(its complete folds: 0, 1\)",
    "weights count": r"--weights gives 3 numbers for 1 runs",
    "oof weights on other folds": r"--weights oof needs runs that share their folds.*data\.folds_csv=",
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_written(case, demo_run, demo_data, tmp_path):
    kwargs = {"runs": [demo_run], **bad_case(case, demo_run, demo_data, tmp_path)}
    out = tmp_path / "out" / "submission.csv"
    with pytest.raises(UserError, match=BAD_INPUTS[case]) as err:
        inference.make_submission(out=out, **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_input_from_the_command_line_is_one_line_and_exit_2(demo_run, demo_data, tmp_path):
    test = read_ids(demo_data / "test.csv")
    dup = write_csv(tmp_path / "dup.csv", pd.concat([test, test.tail(1)]))
    out = tmp_path / "sub.csv"
    res = run_script("predict.py", "--runs", str(demo_run), "--test", str(dup), "--out", str(out))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: test CSV has duplicate ids in column 'id': {test['id'].iloc[-1]}"]
    assert not out.exists() and not (tmp_path / "sub_parts.csv").exists()
