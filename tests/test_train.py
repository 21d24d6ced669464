"""The trainer end to end: outputs, resume, several processes, real data, several targets."""

import hashlib
import shutil
import subprocess

import numpy as np
import pandas as pd
import yaml

from bertreg import config, dropout, metrics
from bertreg.model import load_fold_model
from conftest import ROOT, run_script, shared_data, two_process_launch


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_run_leaves_every_output(demo_run, demo_data):
    train = pd.read_csv(demo_data / "train.csv")
    for name in ("config.yaml", "folds.csv", "oof.csv", "metrics.json", "curves.png"):
        assert (demo_run / name).is_file(), name
    assert (demo_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folds = pd.read_csv(demo_run / "folds.csv")
    assert sorted(folds["id"]) == sorted(train["id"]) and set(folds["fold"]) == {0, 1}
    oof = pd.read_csv(demo_run / "oof.csv")
    assert sorted(oof["id"]) == sorted(train["id"]) and list(oof.columns) == ["id", "fold", "target", "pred"]
    summary = yaml.safe_load((demo_run / "metrics.json").read_text())
    assert summary["metric"] == "rmse" and [f["fold"] for f in summary["folds"]] == [0, 1]
    assert np.isclose(summary["cv"], metrics.score("rmse", oof["target"], oof["pred"]))
    # the synthetic task is learnable: CV clearly beats predicting the mean
    assert summary["cv"] < 0.7 * oof["target"].std()
    for k in (0, 1):
        fold = demo_run / f"fold_{k}"
        hist = pd.read_csv(fold / "history.csv")
        assert list(hist.columns) == ["step", "epoch", "train_loss", "val_score", "lr"]
        assert np.isclose(hist["val_score"].min(), summary["folds"][k]["score"])
        model, _, settings = load_fold_model(fold)
        assert dropout.live_dropout(model) == [] and settings["max_len"] == 64
        assert yaml.safe_load((fold / "config.json").read_text())["hidden_dropout_prob"] == 0.0
    saved = config.load(demo_run / "config.yaml")
    assert saved.data.n_folds == 2 and saved.train.max_len == 64


def rerun(run, *overrides):
    return run_script("train.py", "--config", str(run / "config.yaml"), f"output_dir={run.parent}", *overrides)


def test_rerun_keeps_complete_folds_and_redoes_an_incomplete_one(demo_run, tmp_path):
    run = tmp_path / "demo"
    shutil.copytree(demo_run, run)
    before = {k: digest(run / f"fold_{k}" / "model.safetensors") for k in (0, 1)}
    res = rerun(run)
    assert res.returncode == 0 and "already trained" in res.stdout
    (run / "fold_1" / "metrics.json").unlink()  # as if killed during fold 1
    res = rerun(run)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fold 0 is complete: kept" in res.stdout
    assert digest(run / "fold_0" / "model.safetensors") == before[0]
    assert (run / "fold_1" / "metrics.json").is_file()
    assert len(pd.read_csv(run / "oof.csv")) == len(pd.read_csv(run / "folds.csv"))


def test_rerun_with_another_config_is_refused_unless_overwrite(demo_run, tmp_path):
    run = tmp_path / "demo"
    shutil.copytree(demo_run, run)
    res = rerun(run, "train.lr=1e-6")
    assert res.returncode == 2 and "train.lr" in res.stderr and "train.overwrite=true" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def tiny_args(tiny_bert, data, out, *extra):
    return ["--config", str(ROOT / "configs" / "demo.yaml"), f"output_dir={out}", f"model.name_or_path={tiny_bert}",
            f"data.train_csv={data}", "data.make_demo=false", "data.n_folds=2", "train.epochs=1",
            "train.max_len=32", "train.eval_every=4", "train.lr=1e-3", *extra]


def test_two_processes_predict_every_row_exactly_once(tiny_bert, demo_data, tmp_path):
    data = tmp_path / "train.csv"
    pd.read_csv(demo_data / "train.csv").head(121).to_csv(data, index=False)  # odd: uneven shards
    cmd, env = two_process_launch("train.py", *tiny_args(tiny_bert, data, tmp_path / "runs"))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout
    oof = pd.read_csv(tmp_path / "runs" / "demo" / "oof.csv")
    assert oof["id"].is_unique and sorted(oof["id"]) == sorted(pd.read_csv(data)["id"])
    assert np.isfinite(oof["pred"]).all()


def test_several_targets_and_truncation(tiny_bert, tmp_path):
    cols = ["bt_easiness", "fk_grade", "ari", "smog", "dale_chall", "carec"]
    data = tmp_path / "multi.csv"
    pd.read_csv(shared_data("commonlit-multi", "train.csv")).head(80).to_csv(data, index=False)
    res = run_script("train.py", *tiny_args(tiny_bert, data, tmp_path / "runs", f"data.target_cols=[{','.join(cols)}]",
                                             "train.max_len=16", "experiment=multi"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "80 of 80 texts are longer than train.max_len=16 tokens and were truncated" in res.stdout
    run = tmp_path / "runs" / "multi"
    oof = pd.read_csv(run / "oof.csv")
    assert list(oof.columns) == ["id", "fold", *cols, *[f"pred_{c}" for c in cols]]
    summary = yaml.safe_load((run / "metrics.json").read_text())
    assert summary["metric"] == "mcrmse" and set(summary["per_target_rmse"]) == set(cols)
    assert np.isclose(summary["cv"], np.mean(list(summary["per_target_rmse"].values())))
    # z-scored training brings every target near its own scale's mean, not the big ones' only
    assert all(summary["per_target_rmse"][c] < 3 * oof[c].std() for c in cols)


def test_minilm_beats_the_target_spread_on_commonlit(tmp_path):
    data = tmp_path / "train.csv"
    df = pd.read_csv(shared_data("commonlit", "train.csv")).sample(320, random_state=0)
    df.to_csv(data, index=False)
    res = run_script("train.py", "--config", str(ROOT / "configs" / "demo.yaml"), f"output_dir={tmp_path}",
                     f"data.train_csv={data}", "data.make_demo=false", "data.n_folds=2", "experiment=commonlit",
                     "train.epochs=2", "train.max_len=128", "train.eval_every=null", "train.batch_size=16")
    assert res.returncode == 0, res.stderr[-3000:]
    cv = yaml.safe_load((tmp_path / "commonlit" / "metrics.json").read_text())["cv"]
    assert cv < df["target"].std(), (cv, df["target"].std())
