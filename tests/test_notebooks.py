"""Both notebooks run end to end in a real Jupyter kernel, on the demo, offline: a broken one fails here.

The kernel is the "python3" kernelspec; jupyter_client starts it with this interpreter
(sys.executable), so it sees the same packages as the tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import nbformat
from conftest import ROOT
from nbclient import NotebookClient

from bertreg.export import export


def parameters_cell(nb: nbformat.NotebookNode) -> int:
    return next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell from the repo root, as Jupyter does for a notebook opened there."""
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def test_train_notebook_trains_and_shows_curves_and_cv(tiny_bert, demo_data, tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "train.ipynb", as_version=4)
    overrides = [f"model.name_or_path={tiny_bert}", f"data.train_csv={demo_data / 'train.csv'}",
                 "experiment=nb", "data.n_folds=2", "train.epochs=1", "train.max_len=64", "train.eval_every=null"]
    nb.cells[parameters_cell(nb)].source = (f"CONFIG = 'configs/demo.yaml'\nOVERRIDES = {overrides!r}\n"
                                            f"OUTPUT_DIR = {str(tmp_path / 'runs')!r}")
    execute(nb)
    run = tmp_path / "runs" / "nb"
    assert (run / "fold_1" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    assert len(outputs(nb, "image/png")) == 1
    table = outputs(nb, "text/html")[-1]["data"]["text/html"]
    assert "rmse" in table and "CV" in table


def test_inference_notebook_submits_from_an_exported_dataset(demo_run, demo_data, tmp_path):
    dataset = export([demo_run], tmp_path / "input" / "demo-models", half=True, user="someone")
    out = tmp_path / "working" / "submission.csv"
    nb = nbformat.read(ROOT / "notebooks" / "inference.ipynb", as_version=4)
    given = nbformat.v4.new_code_cell(  # after the paths cell, as papermill injects parameters
        f"MODELS = {str(dataset)!r}\nTEST = {str(demo_data / 'test.csv')!r}\n"
        f"SAMPLE = {str(demo_data / 'sample_submission.csv')!r}\nOUT = {str(out)!r}\nWEIGHTS = 'oof'")
    nb.cells.insert(parameters_cell(nb) + 1, given)
    nb.cells.append(nbformat.v4.new_code_cell("import bertreg\nprint(bertreg.__file__)"))
    execute(nb)
    assert nb.cells[-1].outputs[0]["text"].strip().startswith(str(dataset / "src"))  # the exported kit ran

    sample = pd.read_csv(demo_data / "sample_submission.csv", dtype={"id": str})
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == list(sample.columns) and sub["id"].tolist() == sample["id"].tolist()
    assert np.isfinite(sub["target"]).all() and sub["target"].std() > 0
