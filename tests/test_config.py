"""Config: YAML plus dotted overrides, unknown keys rejected with a suggestion, values validated."""

import pytest
import yaml

from bertreg import config
from bertreg.errors import UserError

BASE = {"model": {"name_or_path": "some/model"}, "data": {"train_csv": "train.csv"}}


def test_overrides_are_read_as_yaml_scalars_and_lists():
    got = config.parse_overrides(["train.lr=3e-5", "train.folds=[0, 2]", "model.backbone_dropout=null",
                                  "model.pooling=cls", "train.epochs=2", "train.mixed_precision=no",
                                  "train.overwrite=true"])
    assert got == {"train.lr": 3e-5, "train.folds": [0, 2], "model.backbone_dropout": None,
                   "model.pooling": "cls", "train.epochs": 2, "train.mixed_precision": "no",
                   "train.overwrite": True}


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"lr": "5e-5", "epochs": 4}}).replace("'5e-5'", "5e-5"))
    cfg = config.load(path, ["train.epochs=1", "data.target_cols=[a, b]"])
    assert cfg.train.lr == 5e-5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 1
    assert cfg.data.target_cols == ["a", "b"]
    assert cfg.data.n_folds == 5  # untouched keys keep their defaults


@pytest.mark.parametrize("override, suggestion", [
    ("train.learning_rate=1e-5", "train.lr"),
    ("trian.lr=1e-5", "train.lr"),
    ("model.head_dropuot=0.1", "model.head_dropout"),
])
def test_unknown_override_names_key_and_closest(override, suggestion):
    with pytest.raises(UserError) as err:
        config.build(BASE, config.parse_overrides([override]))
    assert override.split("=")[0] in str(err.value) and suggestion in str(err.value)


def test_unknown_key_in_yaml_is_rejected():
    with pytest.raises(UserError, match="train.batchsize.*train.batch_size"):
        config.build({**BASE, "train": {"batchsize": 8}})


@pytest.mark.parametrize("override, culprit", [
    ("data.n_folds=1", "data.n_folds"),
    ("model.pooling=max", "model.pooling"),
    ("train.lr=-1", "train.lr"),
    ("train.epochs=two", "train.epochs"),
    ("model.head_dropout=1.0", "model.head_dropout"),
    ("train.folds=[7]", "train.folds"),
    ("train.scheduler=exp", "train.scheduler"),
])
def test_bad_values_name_the_key(override, culprit):
    with pytest.raises(UserError, match=culprit.replace(".", r"\.")):
        config.build(BASE, config.parse_overrides([override]))


def test_resolved_config_round_trips(tmp_path):
    cfg = config.build(BASE, config.parse_overrides(["train.lr=3e-5", "train.folds=[1]"]))
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict()))
    assert config.load(saved) == cfg
