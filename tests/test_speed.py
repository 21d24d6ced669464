"""The speed features keep their promises: little padding, the same numbers from the faster paths.

Speed itself is measured by `python src/bench.py throughput`, never here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import minilm_path, run_script, shared_data


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts shaped like essays and excerpts: a long right tail, cut at max_len 512."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.3, sigma=0.45, size=n), 8, 512).astype(int).tolist()


def test_pad_fraction_counts_padding_as_the_collator_pads():
    from bertreg.data import Collator, pad_fraction

    lengths = [5, 3, 8, 16]
    batches = [[0, 1], [2, 3]]
    # batch 1 is padded to 8 (a multiple of 8): 16 computed, 8 real; batch 2 to 16: 32 computed, 24 real
    assert pad_fraction(lengths, batches, multiple=8) == pytest.approx(1 - 32 / 48)
    collated = Collator(pad_id=0, multiple=8)([{"input_ids": [1] * 5, "idx": 0}, {"input_ids": [1] * 3, "idx": 1}])
    assert collated["input_ids"].shape == (2, 8)


@pytest.mark.parametrize("n,waste", [(600, 0.03), (5000, 0.02)])
def test_length_grouping_wastes_little_on_a_wide_length_distribution(n, waste):
    from bertreg.data import LengthGroupedBatchSampler, pad_fraction

    lengths = lognormal_lengths(n)
    grouped = LengthGroupedBatchSampler(lengths, 16, seed=1)
    plain = LengthGroupedBatchSampler(lengths, 16, seed=1, group_by_length=False)
    for epoch in range(2):
        grouped.set_epoch(epoch)
        batches = list(grouped)
        assert sorted(i for b in batches for i in b) == list(range(n))  # every row once per epoch
        # multiple=1: the waste of the grouping itself, before rounding widths up to a multiple of 8
        assert pad_fraction(lengths, batches, multiple=1) <= waste
    assert pad_fraction(lengths, list(plain), multiple=1) > 0.2  # what random batches of such lengths waste


def test_grouped_batches_stay_random_between_epochs():
    from bertreg.data import LengthGroupedBatchSampler

    sampler = LengthGroupedBatchSampler(lognormal_lengths(2000), 16, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert {tuple(b) for b in first} != {tuple(b) for b in second}
    sizes = [np.mean(lognormal_lengths(2000)[b[0]]) for b in first[:20]]
    assert sizes != sorted(sizes, reverse=True)  # not served longest first: shuffled across chunks


def test_commonlit_padding_at_max_len_256():
    from bertreg import data
    from bertreg.model import load_tokenizer

    df = data.load_train(shared_data("commonlit", "train.csv"), "id", "excerpt", ["target"])
    ids, _ = data.tokenize(load_tokenizer(str(minilm_path())), df["excerpt"].tolist(), 256)
    lengths = [len(x) for x in ids]
    train_rows = np.random.default_rng(0).permutation(len(lengths))[: len(lengths) * 4 // 5]  # one fold's rows
    fold_lengths = [lengths[i] for i in train_rows]
    batches = list(data.LengthGroupedBatchSampler(fold_lengths, 16, seed=42))
    assert data.pad_fraction(fold_lengths, batches) <= 0.03
    assert data.pad_fraction(lengths, data.sorted_batches(lengths, 32), multiple=1) <= 0.005  # inference


def _batch(n: int = 4, width: int = 24):
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (n, width))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    return ids, mask


def test_kit_sdpa_matches_transformers_sdpa_and_ignores_padding(tiny_bert):
    from bertreg.model import SDPA, build_model

    model = build_model(str(tiny_bert), 1)
    assert model.backbone.config._attn_implementation == SDPA
    ids, mask = _batch()
    ours = model(ids, mask)
    model.backbone.set_attn_implementation("sdpa")
    stock = model(ids, mask)
    torch.testing.assert_close(ours, stock)
    noisy = ids.clone()
    noisy[mask == 0] = 4242  # what sits in the padding must not matter
    model.backbone.set_attn_implementation(SDPA)
    torch.testing.assert_close(model(noisy, mask), ours)


def test_kit_sdpa_gradients_under_bf16_autocast_match_fp32(tiny_bert):
    from bertreg.model import build_model

    def grads(autocast: bool) -> torch.Tensor:
        model = build_model(str(tiny_bert), 1)
        ids, mask = _batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, mask).float().pow(2).mean()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.backbone.encoder.parameters()])

    exact, mixed = grads(False), grads(True)
    assert torch.isfinite(mixed).all()
    cosine = torch.nn.functional.cosine_similarity(exact, mixed, dim=0)
    assert cosine > 0.99


def test_other_attention_families_still_build(tiny_models):
    from bertreg.model import build_model

    ids, mask = _batch()
    for family in ("deberta-v2", "distilbert"):
        out = build_model(str(tiny_models[family]), 1)(ids, mask)
        assert torch.isfinite(out).all()


def test_saved_fold_loads_without_the_kit_attention(tiny_bert, tmp_path):
    from bertreg.model import build_model, load_fold_model, load_tokenizer, save_fold_model

    save_fold_model(build_model(str(tiny_bert), 1), load_tokenizer(str(tiny_bert)), tmp_path, {})
    assert "bertreg_sdpa" not in (tmp_path / "config.json").read_text()
    model, _, _ = load_fold_model(tmp_path)
    assert model.backbone.config._attn_implementation == "sdpa"


def test_bf16_inference_keeps_target_units_and_predictions(tiny_bert):
    from bertreg.model import build_model, cast_for_inference

    model = build_model(str(tiny_bert), 1, target_mean=np.array([-0.96]), target_std=np.array([1.03])).eval()
    ids, mask = _batch()
    with torch.inference_mode():
        exact = model(ids, mask)
        cast_for_inference(model, torch.bfloat16)
        fast = model(ids, mask)
    assert model.backbone.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert model.target_mean.dtype == model.target_std.dtype == model.head.weight.dtype == torch.float32
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, atol=0.02, rtol=0)


def test_throughput_benchmark_writes_every_figure_it_promises(tiny_bert, demo_data, tmp_path):
    """The benchmark itself runs end to end (a tiny model, one timed step): its JSON has every figure the README names."""
    out = tmp_path / "throughput.json"
    res = run_script("bench.py", "throughput", "--model", str(tiny_bert), "--data", str(demo_data / "train.csv"),
                     "--max-len", "64", "--batch-size", "8", "--steps", "1", "--warmup-steps", "1",
                     "--infer-rows", "40", "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["train"]) == {"kit", "hf", "hf_tuned", "hf_tuned_no_dropout"}
    assert set(result["infer"]) == {"kit", "kit_compiled", "hf", "hf_tuned"}
    assert result["infer"]["kit_compiled"]["compiled"] and not result["infer"]["kit"]["compiled"]
    for kind in ("train", "infer"):
        for side, row in result[kind].items():
            assert row["samples_per_s"] > 0 and row["peak_mem_mib"] > 0 and row["mfu"] > 0, (kind, side)
    for key in ("train_speedup_vs_hf", "train_speedup_vs_hf_tuned", "infer_speedup_vs_hf",
                "infer_speedup_vs_hf_compiled", "mfu", "compile_seconds"):
        assert np.isfinite(result[key]), key
    rows = result["compile_break_even_rows"]  # None when compiling a model this tiny saves nothing
    assert rows is None or rows > 0
    assert result["infer_speedup_vs_hf"] == pytest.approx(
        result["infer"]["kit"]["samples_per_s"] / result["infer"]["hf"]["samples_per_s"])
    assert 0 <= result["pad_fraction"] < 0.5
    assert "infer_speedup_vs_hf_compiled" in res.stdout and "compile_seconds" in res.stdout
