"""src/tune.py: a resumable study, pruning, failed trials, two workers on one PostgreSQL study, bad input."""

from __future__ import annotations

import gc
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, SRC, run_script
from pg import free_port, postgres_url  # noqa: F401 (a fixture)

from bertreg import config, cv, tuning
from bertreg.model import Regressor

STATES = optuna.trial.TrialState


@pytest.fixture
def tune_yaml(tmp_path, tiny_bert, demo_data):
    """A tiny study config: 2 folds of the demo data; a trial trains fold 0 for one epoch, 4 steps, 4 evaluations."""
    def write(**tune):
        cfg = {"experiment": "tiny", "output_dir": str(tmp_path / "runs"),
               "data": {"train_csv": str(demo_data / "train.csv"), "n_folds": 2},
               "model": {"name_or_path": str(tiny_bert)},
               "train": {"epochs": 1, "max_len": 64, "batch_size": 32, "eval_batch_size": 128, "eval_every": 1,
                         "mixed_precision": "no", "lr": 1e-3},
               "tune": {"startup_trials": 2, "warmup_evals": 1,
                        "space": {"train.lr": {"type": "float", "low": 1e-8, "high": 3e-3, "log": True},
                                  "model.head_dropout": {"type": "float", "low": 0.0, "high": 0.5}}, **tune}}
        path = tmp_path / "tune.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


@pytest.fixture
def quiet_optuna():
    """pytest keeps every log record, and the record of a failed trial holds its traceback, and so its model."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(level)


def live_models() -> int:
    gc.collect()
    return sum(isinstance(o, Regressor) for o in gc.get_objects())


def test_same_command_resumes_the_study_and_best_yaml_trains(tune_yaml, tmp_path):
    path = tune_yaml()
    first = run_script("tune.py", "--config", str(path), "--n-trials", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_script("tune.py", "--config", str(path), "--n-trials", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    out = tmp_path / "runs" / "tiny_tune"
    study = optuna.load_study(study_name="tiny_tune", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]
    params = [tuple(t.params.values()) for t in study.trials]
    assert len(set(params)) == 3, "the resumed study drew a trial it had already run"
    assert len(pd.read_csv(out / "trials.csv")) == 3
    assert "3 trials" in again.stdout
    for png in ("history.png", "slice.png", "importances.png", "contour.png"):
        assert (out / png).stat().st_size > 0, png

    best = config.load(out / "best.yaml")
    assert best.train.lr == pytest.approx(study.best_params["train.lr"])
    assert best.model.head_dropout == pytest.approx(study.best_params["model.head_dropout"])
    assert best.experiment == "tiny_tune_best" and best.train.folds is None  # all folds, not the trials' one
    assert cv.run(best)["n_oof"] == 240  # what `python src/train.py --config best.yaml` runs: all folds
    assert (tmp_path / "runs" / "tiny_tune_best" / "metrics.json").is_file()
    # trial folders keep their scores, not their weights (tune.keep_models: false)
    assert (out / "trials" / "trial_0" / "fold_0" / "history.csv").is_file()
    assert not list((out / "trials").rglob("*.safetensors"))


def test_a_near_zero_learning_rate_is_pruned(tune_yaml, quiet_optuna):
    cfg = config.load(tune_yaml(n_trials=3))
    before = live_models()  # other tests' fixtures may hold models
    study = tuning.open_study(cfg, "rmse")
    for lr in (3e-3, 3e-3, 1e-8):  # two sound trials set the median, then one that cannot learn
        study.enqueue_trial({"train.lr": lr, "model.head_dropout": 0.0})
    study = tuning.run(cfg)
    assert [t.state for t in study.trials] == [STATES.COMPLETE, STATES.COMPLETE, STATES.PRUNED]
    assert len(study.trials[2].intermediate_values) < len(study.trials[0].intermediate_values)
    assert live_models() == before


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tune_yaml, monkeypatch, quiet_optuna):
    cfg = config.load(tune_yaml(n_trials=2))
    real_run = cv.run
    before = live_models()  # other tests' fixtures may hold models
    models_at_start = []

    def run(trial_cfg, accelerator=None, on_eval=None):
        models_at_start.append(live_models())
        if trial_cfg.experiment == "trial_0":  # out of memory in the middle of training, model alive
            def on_eval(step, score):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(trial_cfg, accelerator, on_eval)

    monkeypatch.setattr(cv, "run", run)
    study = tuning.run(cfg)
    assert [t.state for t in study.trials] == [STATES.FAIL, STATES.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert models_at_start == [before] * 2 and live_models() == before  # each trial's model was freed
    table = pd.read_csv(tuning.study_dir(cfg) / "trials.csv")
    assert table["user_attrs_fail_reason"].notna().tolist() == [True, False]
    assert (tuning.study_dir(cfg) / "best.yaml").is_file()


def test_two_workers_share_one_postgres_study(tune_yaml, tmp_path, postgres_url):  # noqa: F811
    path = tune_yaml()
    # the second worker names the server as users do, a bare postgresql:// (psycopg2 behind it)
    urls = [postgres_url, postgres_url.replace("postgresql+psycopg2://", "postgresql://")]
    workers = [subprocess.Popen([sys.executable, str(SRC / "tune.py"), "--config", str(path), "--n-trials", "2",
                                 "--storage", urls[i], "--study", "shared",
                                 f"output_dir={tmp_path / f'worker{i}'}", f"tune.sampler_seed={i}"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state in (STATES.COMPLETE, STATES.PRUNED) for t in study.trials)
    assert len({tuple(t.params.values()) for t in study.trials}) == 4


@pytest.mark.parametrize("args, message", [
    (["tune.space={train.lrr: {type: float, low: 1.0e-5, high: 1.0e-4}}"],
     "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["tune.space={model.head_dropout: {type: float, low: 0.5, high: 0.1}}"], "low (0.5) must be below high (0.1)"),
    (["tune.space={model.head_dropout: {type: float, low: 0.0, high: 1.0}}"], "must be < 1"),
    (["tune.space={train.folds: {type: categorical, choices: [[0], [1]]}}"], "cannot be searched"),
    (["tune.folds=[5]"], "config key 'tune.folds' names folds [5] outside 0..1"),
    (["--storage", "postgresql+psycopg2://nobody@127.0.0.1:{port}/optuna"], "cannot open the study storage"),
])
def test_bad_input_is_one_line_and_exit_code_2(tune_yaml, tmp_path, monkeypatch, capsys, args, message):
    import tune

    args = [a.replace("{port}", str(free_port())) for a in args]
    monkeypatch.setattr(sys, "argv", ["tune.py", "--config", str(tune_yaml()), *args])
    with pytest.raises(SystemExit) as stop:
        tune.cli(tune.main)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing written
