"""The regressor: dropout really off in every family, pooling, save/load, LLRD groups, re-init."""

import pytest
import torch

from bertreg import dropout
from bertreg.model import build_model, encoder_layers, load_fold_model, save_fold_model
from bertreg.model import load_tokenizer
from bertreg.optim import param_groups
from conftest import FAMILIES


def batch(n=3, t=12, pad_from=8):
    ids = torch.randint(1000, 2000, (n, t))
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, pad_from:] = 0
    ids[0, pad_from:] = 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_dropout_is_off_in_training_mode(tiny_models, family):
    torch.manual_seed(0)
    model = build_model(str(tiny_models[family]), 1).train()
    assert dropout.live_dropout(model.backbone) == []
    assert all(v == 0.0 for v in dropout.config_dropout(model.backbone.config).values())
    ids, mask = batch()
    # dropout off means training mode is deterministic and equals evaluation mode
    with torch.no_grad():
        a, b = model(ids, mask), model(ids, mask)
        c = model.eval()(ids, mask)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_dropout_can_be_kept_or_set(tiny_models, family):
    kept = build_model(str(tiny_models[family]), 1, backbone_dropout=None).train()
    assert dropout.live_dropout(kept.backbone)  # the tiny checkpoints carry 0.1 like real ones
    ids, mask = batch()
    with torch.no_grad():
        assert not torch.equal(kept(ids, mask), kept(ids, mask))
    set_ = build_model(str(tiny_models[family]), 1, backbone_dropout=0.05)
    assert {s.rsplit("=", 1)[1] for s in dropout.live_dropout(set_.backbone)} == {"0.05"}


@pytest.mark.parametrize("pooling", ["mean", "cls", "attention"])
def test_pooling_ignores_padding(tiny_bert, pooling):
    torch.manual_seed(0)
    model = build_model(str(tiny_bert), 2, pooling=pooling).eval()
    ids, mask = batch()
    with torch.no_grad():
        padded = model(ids, mask)[0]
        trimmed = model(ids[:1, :8], mask[:1, :8])[0]
    assert padded.shape == (2,)
    assert torch.allclose(padded, trimmed, atol=1e-5)


def test_saved_fold_rebuilds_the_same_model_with_dropout_recorded(tiny_models, tmp_path):
    model = build_model(str(tiny_models["deberta-v2"]), 3, pooling="attention", head_dropout=0.2,
                        target_mean=[1, 2, 3], target_std=[2, 2, 2]).eval()
    tok = load_tokenizer(str(tiny_models["deberta-v2"]))
    save_fold_model(model, tok, tmp_path, {"max_len": 64})
    loaded, _, settings = load_fold_model(tmp_path)
    assert settings["pooling"] == "attention" and settings["head_dropout"] == 0.2
    assert all(v == 0.0 for v in dropout.config_dropout(loaded.backbone.config).values())
    ids, mask = batch()
    with torch.no_grad():
        assert torch.allclose(model(ids, mask), loaded(ids, mask), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_layerwise_lr_decay_groups(tiny_models, family):
    model = build_model(str(tiny_models[family]), 1)
    groups = param_groups(model, lr=1e-4, head_lr=1e-3, decay=0.5, weight_decay=0.01)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len([p for p in model.parameters()])
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    layers = encoder_layers(model.backbone)
    top, bottom = layers[-1], layers[0]
    assert {lr_of[id(p)] for p in top.parameters()} == {1e-4}
    assert {lr_of[id(p)] for p in bottom.parameters()} == {1e-4 * 0.5 ** (len(layers) - 1)}
    embeddings = [p for n, p in model.backbone.named_parameters() if "embed" in n and "layer" not in n]
    assert {lr_of[id(p)] for p in embeddings} == {1e-4 * 0.5 ** len(layers)}
    assert lr_of[id(model.head.weight)] == 1e-3
    assert wd_of[id(model.head.bias)] == 0.0 and wd_of[id(model.head.weight)] == 0.01


def test_reinit_changes_only_the_top_layers(tiny_bert):
    torch.manual_seed(0)
    plain = build_model(str(tiny_bert), 1)
    torch.manual_seed(1)
    reinit = build_model(str(tiny_bert), 1, reinit_layers=1)
    a, b = encoder_layers(plain.backbone), encoder_layers(reinit.backbone)
    same = lambda x, y: all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters()))  # noqa: E731
    assert same(a[0], b[0]) and not same(a[-1], b[-1])
