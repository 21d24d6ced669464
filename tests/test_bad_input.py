"""Each bad input stops train.py with one clear line, exit code 2, and no run folder that looks complete."""

import re
import runpy

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SRC, no_compiler, run_script, the_error_line


def good_frame(n=12):
    return pd.DataFrame({"id": [f"x{i}" for i in range(n)], "excerpt": [f"text number {i}." for i in range(n)],
                         "target": np.linspace(-1, 1, n)})


def train(monkeypatch, capsys, tmp_path, model, *overrides):
    argv = ["train.py", "--config", str(ROOT / "configs" / "demo.yaml"), f"output_dir={tmp_path / 'runs'}",
            f"model.name_or_path={model}", "data.make_demo=false", "data.n_folds=2", *overrides]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SRC / "train.py"), run_name="__main__")
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "runs").rglob("metrics.json"))
    return err


def with_csv(tmp_path, df, name="train.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return f"data.train_csv={path}"


CASES = {
    "missing file": (None, "train CSV not found"),
    "empty file": ("", "train CSV is empty"),
    "no id column": (lambda d: d.drop(columns="id"), "no column id; columns present: excerpt, target"),
    "no text column": (lambda d: d.rename(columns={"excerpt": "body"}), "no column excerpt"),
    "no target column": (lambda d: d.drop(columns="target"), "no column target"),
    "nan target": (lambda d: d.assign(target=d.target.where(d.index != 3)), "column 'target' has 1 missing.*x3=nan"),
    "inf target": (lambda d: d.assign(target=d.target.replace(d.target[2], np.inf)), "x2=inf"),
    "non-numeric target": (lambda d: d.assign(target=d.target.astype(object).where(d.index != 5, "hard")), "x5='hard'"),
    "empty text": (lambda d: d.assign(excerpt=d.excerpt.where(d.index != 4, "  ")), "empty or non-text.*x4"),
    "duplicate ids": (lambda d: d.assign(id=d.id.where(d.index != 1, "x0")), "duplicate ids.*x0"),
    "fewer rows than folds": (lambda d: d.head(1), "1 rows, fewer than data.n_folds=2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_csv(case, tmp_path, monkeypatch, capsys, tiny_bert):
    make, expected = CASES[case]
    if make is None:
        arg = f"data.train_csv={tmp_path / 'nope.csv'}"
    elif isinstance(make, str):
        (tmp_path / "train.csv").write_text(make)
        arg = f"data.train_csv={tmp_path / 'train.csv'}"
    else:
        arg = with_csv(tmp_path, make(good_frame()))
    err = train(monkeypatch, capsys, tmp_path, tiny_bert, arg)
    assert re.search(expected, err), err
    assert not (tmp_path / "runs").exists()  # checked before any run folder is made


@pytest.mark.parametrize("overrides, expected", [
    (["data.n_folds=1"], "data.n_folds' must be >= 2"),
    (["train.lerning_rate=1e-5"], "unknown config key 'train.lerning_rate'"),
])
def test_bad_config(overrides, expected, tmp_path, monkeypatch, capsys, tiny_bert):
    assert expected in train(monkeypatch, capsys, tmp_path, tiny_bert, with_csv(tmp_path, good_frame()), *overrides)


def test_missing_model_path(tmp_path, monkeypatch, capsys):
    err = train(monkeypatch, capsys, tmp_path, str(tmp_path / "models" / "nope"), with_csv(tmp_path, good_frame()))
    assert "model path does not exist" in err and "nope" in err


def test_bad_input_from_a_real_command_line(tmp_path, tiny_bert):
    res = run_script("train.py", "--config", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and res.stderr.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'}"


def test_train_compile_that_cannot_compile_is_one_line_and_exit_2(tmp_path, tiny_bert):
    res = run_script("train.py", "--config", str(ROOT / "configs" / "demo.yaml"), f"output_dir={tmp_path / 'runs'}",
                     f"model.name_or_path={tiny_bert}", "data.make_demo=false", "data.n_folds=2",
                     with_csv(tmp_path, good_frame()), "train.compile=true",
                     env=no_compiler(tmp_path))
    error = the_error_line(res)
    assert "train.compile=false" in error and "/nonexistent/c++" in error
    assert not list((tmp_path / "runs").rglob("metrics.json"))
