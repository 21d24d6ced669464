"""src/export.py: a Kaggle dataset folder of runs and the kit; fp16 weights that load and predict as trained."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_script
from safetensors import safe_open

from bertreg import data
from bertreg.errors import UserError
from bertreg.export import export
from bertreg.model import load_fold_model


def test_half_export_is_a_complete_dataset_whose_models_predict_as_trained(demo_run, demo_data, tmp_path):
    out = export([demo_run], tmp_path / "kaggle" / "demo-models", half=True, user="someone")
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/demo-models" and 6 <= len(meta["title"]) <= 50 and meta["licenses"]
    assert (out / "src" / "predict.py").is_file() and (out / "src" / "bertreg" / "inference.py").is_file()
    assert not list(out.rglob("__pycache__")) and not list(tmp_path.glob("kaggle/.*"))
    run = out / "runs" / "demo"
    for name in ("config.yaml", "metrics.json", "oof.csv", "folds.csv"):
        assert (run / name).read_bytes() == (demo_run / name).read_bytes()
    for k in (0, 1):
        for name in ("config.json", "bertreg.json", "tokenizer.json", "metrics.json"):
            assert (run / f"fold_{k}" / name).is_file()
        weights = run / f"fold_{k}" / "model.safetensors"
        assert weights.stat().st_size < 0.55 * (demo_run / f"fold_{k}" / "model.safetensors").stat().st_size
        with safe_open(str(weights), "pt") as f:
            dtypes = {name: f.get_tensor(name).dtype for name in f.keys()}
        assert dtypes.pop("target_mean") == dtypes.pop("target_std") == torch.float32  # the target scale stays exact
        assert set(dtypes.values()) == {torch.float16}

    # loaded back in float32 (CPU inference), the fp16 model predicts fold 0's validation rows close to training's
    half, tokenizer, settings = load_fold_model(run / "fold_0")
    assert {p.dtype for p in half.parameters()} == {torch.float32}
    oof = pd.read_csv(demo_run / "oof.csv", dtype={"id": str})
    oof = oof[oof["fold"] == 0].head(16)
    texts = pd.read_csv(demo_data / "train.csv", dtype={"id": str}).set_index("id").loc[oof["id"], "excerpt"]
    ids, _ = data.tokenize(tokenizer, texts.tolist(), settings["max_len"])
    batch = data.Collator(tokenizer.pad_token_id)([{"input_ids": x, "idx": i} for i, x in enumerate(ids)])
    with torch.inference_mode():
        pred = half(batch["input_ids"], batch["attention_mask"]).numpy()[:, 0]
    np.testing.assert_allclose(pred, oof["pred"], atol=5e-3)  # fp16 rounding alone moves them ~5e-4


def test_export_replaces_only_when_asked_and_refuses_bad_names(demo_run, tmp_path, monkeypatch):
    run = tmp_path / "run"  # the demo run without its weights' bytes: export copies, it does not load
    shutil.copytree(demo_run, run, ignore=shutil.ignore_patterns("model.safetensors"))
    for k in (0, 1):
        (run / f"fold_{k}" / "model.safetensors").write_bytes(b"weights")
    out = tmp_path / "my-models"
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    export([run], out)
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "someone/my-models"
    with pytest.raises(UserError, match="my-models exists: give --overwrite"):
        export([run], out)
    (out / "stale.txt").write_text("from an older export")
    export([run], out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "runs" / "run" / "fold_1" / "model.safetensors").is_file()

    with pytest.raises(UserError, match="'My_Models' becomes the Kaggle dataset slug"):
        export([run], tmp_path / "My_Models")
    monkeypatch.delenv("KAGGLE_USERNAME")
    with pytest.raises(UserError, match="give --user"):
        export([run], tmp_path / "other-models")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-models", "run"]  # nothing half-made


def test_export_command_line_refuses_a_run_without_complete_folds(tmp_path):
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "empty-run" / "config.yaml").write_text("model:\n  name_or_path: x\ndata:\n  train_csv: t.csv\n")
    res = run_script("export.py", str(tmp_path / "empty-run"), "--out", str(tmp_path / "models"), "--user", "u")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: run {tmp_path / 'empty-run'} has no complete fold "
                                               f"(fold_<k>/ with metrics.json and model.safetensors): finish its training first"]
    assert not (tmp_path / "models").exists()
