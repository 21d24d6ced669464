"""The dropout audit: the variance formula it checks, the sites it hooks, and the script end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from bertreg import audit
from bertreg.model import load_tokenizer
from conftest import FAMILIES, run_script

TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "A short one.",
         "Readability depends on word length, sentence length and how familiar the vocabulary is to readers.",
         "Dropout keeps the mean of a unit but raises its variance."]


@pytest.mark.parametrize("mu,sigma,p", [(0.0, 1.0, 0.1), (2.0, 0.5, 0.1), (0.03, 0.001, 0.3)])
def test_dropout_variance_matches_the_formula(mu, sigma, p):
    torch.manual_seed(0)
    drop = torch.nn.Dropout(p).train()
    chunks = [drop(mu + sigma * torch.randn(100_000, dtype=torch.float64)) for _ in range(10)]
    variances = np.array([c.var().item() for c in chunks])
    means = np.array([c.mean().item() for c in chunks])
    se = variances.std(ddof=1) / np.sqrt(len(variances))  # sampling precision of the pooled estimate
    predicted = audit.predicted_variance(mu, sigma ** 2, p)
    assert abs(variances.mean() - predicted) < 4 * se
    assert abs(means.mean() - mu) < 4 * means.std(ddof=1) / np.sqrt(len(means)) + 1e-12  # the mean is kept
    if mu:  # the mu^2 term is what the formula adds over sigma^2 / (1 - p): the test can tell them apart
        assert abs(variances.mean() - sigma ** 2 / (1 - p)) > 10 * se


def _stock_dropout_calls(path, monkeypatch) -> int:
    """Independent count: dropout calls of a stock eager forward in train mode."""
    model = AutoModel.from_pretrained(path, attn_implementation="eager").train()
    calls = []
    original = torch.nn.functional.dropout

    def counting(x, p=0.5, training=True, inplace=False):
        if training and p > 0:
            calls.append(p)
        return original(x, p, training, inplace)

    tok = load_tokenizer(str(path))
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(torch.nn.functional, "dropout", counting)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return len(calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_find_every_dropout_site(family, tiny_models, monkeypatch):
    path = tiny_models[family]
    expected = _stock_dropout_calls(path, monkeypatch)
    subject = audit.load_subject(str(path))
    before = subject.f(*_batch(subject)).clone()
    report = audit.audit(subject, TEXTS, p=0.1, mc=2, max_len=32, batch_size=4, progress=False)
    sites = report["sites"]
    assert len(sites) == expected
    assert report["uncalled_dropout_modules"] == []
    n_layers = getattr(subject.module.config, "num_hidden_layers", None) or subject.module.config.n_layers
    assert sum(s["kind"] == "attention" for s in sites) == n_layers  # the attention-probability dropouts too
    assert all(s["p"] == 0.1 and abs(s["formula_error"]) < 0.1 for s in sites)
    # the observable attention the audit switches to computes the same eval output as the stock one
    torch.testing.assert_close(subject.f(*_batch(subject)), before, atol=1e-5, rtol=1e-4)


def _batch(subject):
    batch = subject.tokenizer(TEXTS, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_audit_of_a_trained_run_end_to_end(demo_run, demo_data, tmp_path):
    res = run_script("audit.py", "--model", str(demo_run), "--data", str(demo_data / "train.csv"),
                     "--n", "12", "--mc", "3", "--out", str(tmp_path / "audit"))
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert (tmp_path / "audit" / "audit.png").stat().st_size > 0
    assert report["kind"] == "fold" and report["output_units"] == "target units"
    assert report["output_relative_to"] == "target std" and report["output_shift_relative"] > 0
    assert report["output_shift"] > 0 and report["output_mc_spread"] > 0
    assert len(report["output_shift_per_text"]) == 12
    for site in report["sites"]:
        assert {"name", "p", "mu", "sigma2", "var_train", "var_train_predicted"} <= site.keys()
    assert report["sites"][-1]["kind"] == "head" and report["sites"][-1]["next"] is None
    assert "output shift" in res.stdout


def test_bad_input_is_one_line(tmp_path):
    res = run_script("audit.py", "--model", str(tmp_path / "nowhere"), "--data", str(tmp_path / "none.csv"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
