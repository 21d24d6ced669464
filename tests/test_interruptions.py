"""Surviving interruptions: kill -9 and SIGTERM mid-fold resume from the checkpoint, NaN saves nothing, one run per folder."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, SRC, run_script, two_process_launch
from safetensors.torch import load_file

from bertreg import config, cv, lock
from bertreg.engine import TrainingDiverged
from bertreg.errors import Interrupted, UserError

# Runs src/train.py's job in-process, sending itself `signal` at the evaluation of (fold, step):
# a kill at a known point of a fold, by the real signal, with no timing guesswork.
DRIVER = """
import os, signal, sys
sys.path.insert(0, {src!r})
from bertreg import config, cv
from bertreg.errors import cli
fold_at, step_at, sig = int(sys.argv[1]), int(sys.argv[2]), getattr(signal, sys.argv[3])
cfg = config.load(sys.argv[4], sys.argv[5:])
def on_eval(step, score):
    if (len(list(cv.run_dir(cfg).glob("fold_*/metrics.json"))), step) == (fold_at, step_at):
        os.kill(os.getpid(), sig)
cli(lambda: cv.run(cfg, on_eval=on_eval))
"""


DEMO = ROOT / "configs" / "demo.yaml"
# A tiny model gains nothing from threads, and on shared cores they cost it several times over
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def args(tiny_bert: Path, demo_data: Path, out: Path, *extra: str) -> list[str]:
    # 2 folds of 120 training rows, batch 8: 15 steps an epoch, 30 a fold, an evaluation every 5
    return [f"output_dir={out}", f"model.name_or_path={tiny_bert}", f"data.train_csv={demo_data / 'train.csv'}",
            "data.n_folds=2", "train.epochs=2", "train.batch_size=8", "train.max_len=64", "train.eval_every=5",
            "train.lr=1e-3", "train.mixed_precision=no", "data.make_demo=false", *extra]


def interrupt(fold: int, step: int, sig: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER.format(src=str(SRC)), str(fold), str(step), sig, str(DEMO), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **ONE_THREAD})


def train(argv: list[str]) -> subprocess.CompletedProcess:
    return run_script("train.py", "--config", str(DEMO), *argv, env=ONE_THREAD)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tiny_bert, demo_data, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    res = train(args(tiny_bert, demo_data, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "demo"


def assert_same_run(run: Path, reference: Path) -> None:
    for k in (0, 1):
        got, want = pd.read_csv(run / f"fold_{k}" / "history.csv"), pd.read_csv(reference / f"fold_{k}" / "history.csv")
        assert got["step"].tolist() == want["step"].tolist()
        assert np.allclose(got[["train_loss", "val_score", "lr"]], want[["train_loss", "val_score", "lr"]],
                           rtol=1e-5, atol=1e-7)
    assert np.allclose(pd.read_csv(run / "oof.csv")["pred"], pd.read_csv(reference / "oof.csv")["pred"], rtol=1e-5)


def test_kill_9_mid_fold_resumes_from_the_checkpoint(tiny_bert, demo_data, tmp_path, reference):
    argv = args(tiny_bert, demo_data, tmp_path, "train.checkpoint_every=3")
    res = interrupt(1, 20, "SIGKILL", argv)  # fold 1, step 20: the checkpoint of step 18 is on disk
    assert res.returncode == -signal.SIGKILL
    run = tmp_path / "demo"
    fold_0 = sha(run / "fold_0" / "model.safetensors")
    assert [p.name for p in (run / "fold_1" / "checkpoints").iterdir()] == ["step_00000018"]
    assert not (run / "fold_1" / "metrics.json").exists()
    dead = (run / lock.LOCK_FILE).read_text()

    res = train(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fold 0 is complete: kept" in res.stdout
    assert f"fold 1: resuming from {run / 'fold_1' / 'checkpoints' / 'step_00000018'} (step 18/30)" in res.stdout
    assert sha(run / "fold_0" / "model.safetensors") == fold_0  # the complete fold was not retrained
    assert not (run / "fold_1" / "checkpoints").exists()  # checkpoints go once the fold is complete
    assert (run / lock.LOCK_FILE).read_text() != dead  # the dead run's lock was taken over
    assert_same_run(run, reference)


def test_sigterm_mid_fold_saves_the_state_and_the_rerun_resumes(tiny_bert, demo_data, tmp_path, reference):
    argv = args(tiny_bert, demo_data, tmp_path)  # no periodic checkpoints
    res = interrupt(0, 10, "SIGTERM", argv)
    assert res.returncode == 143, res.stderr[-3000:]
    ckpt = tmp_path / "demo" / "fold_0" / "checkpoints" / "step_00000010"
    assert f"stopped: SIGTERM: fold 0 stopped at step 10/30, its state saved in {ckpt}" in res.stderr
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "optimizer.bin").is_file()

    res = train(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"fold 0: resuming from {ckpt} (step 10/30)" in res.stdout
    assert_same_run(tmp_path / "demo", reference)


def test_time_limit_stops_cleanly_with_the_state_saved(tiny_bert, demo_data, tmp_path):
    cfg = config.load(DEMO, args(tiny_bert, demo_data, tmp_path, "train.time_limit=0.01"))
    with pytest.raises(Interrupted, match="time limit: fold 0 stopped at step 1/30") as stopped:
        cv.run(cfg)
    assert stopped.value.exit_code == 124
    assert (tmp_path / "demo" / "fold_0" / "checkpoints" / "step_00000001" / "loop_0.json").is_file()


def test_an_absurd_learning_rate_stops_with_the_step_and_saves_no_nan_model(tiny_bert, demo_data, tmp_path):
    cfg = config.load(DEMO, args(tiny_bert, demo_data, tmp_path, "train.lr=1e6", "train.head_lr=1e6",
                                 "train.checkpoint_every=2", "train.folds=[0]"))
    with pytest.raises(TrainingDiverged, match=r"became (nan|NaN|inf).* by step \d+ \(lr [\d.e+]+\)"):
        cv.run(cfg)
    fold = tmp_path / "demo" / "fold_0"
    assert not (fold / "model.safetensors").exists() and not (fold / "metrics.json").exists()
    for ckpt in (fold / "checkpoints").glob("step_*"):  # the steps before the loss blew up
        assert all(torch.isfinite(w).all() for w in load_file(ckpt / "model.safetensors").values())


def test_a_second_run_on_the_same_experiment_gets_one_clear_line(tiny_bert, demo_data, tmp_path):
    solo = SimpleNamespace(is_main_process=True, num_processes=1)
    out = tmp_path / "demo"
    with lock.experiment_lock(out, solo):
        res = train(args(tiny_bert, demo_data, tmp_path))
        with pytest.raises(UserError, match="is being trained by pid"), lock.experiment_lock(out, solo):
            pass
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {out} is being trained by pid {os.getpid()} on {socket.gethostname()} "
                                  f"(lock {out / lock.LOCK_FILE}): wait for that run to end, or stop it, "
                                  f"or choose another experiment name")
    assert not (out / "folds.csv").exists()
    with lock.experiment_lock(out, solo):  # released: free again
        pass


def test_two_processes_stop_together_on_sigterm_and_resume(tiny_bert, demo_data, tmp_path):
    cmd, env = two_process_launch("train.py", "--config", str(DEMO),
                                  *args(tiny_bert, demo_data, tmp_path, "train.folds=[0]", "train.epochs=3",
                                        "train.batch_size=4", "train.checkpoint_every=2"))  # 45 steps per process
    run = tmp_path / "demo"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run / "fold_0" / "checkpoints").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    main_pid = int((run / lock.LOCK_FILE).read_text().split()[1])
    os.kill(main_pid, signal.SIGTERM)  # process 0 only: process 1 must learn it from the all-reduce
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "stopped: SIGTERM: fold 0 stopped at step" in err, err[-3000:]
    (ckpt,) = (run / "fold_0" / "checkpoints").glob("step_*")  # the last one kept, whole
    assert {"loop_0.json", "loop_1.json", "random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in ckpt.iterdir()}
    assert not (run / "fold_0" / "metrics.json").exists()

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"fold 0: resuming from {ckpt}" in res.stdout
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert history["step"].iloc[-1] == 45 and np.isfinite(history["val_score"]).all()
