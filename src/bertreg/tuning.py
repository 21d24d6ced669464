"""An Optuna study over config keys: each trial is a K-fold run (bertreg.cv) of the configured folds.

Each trial reports its validation score at every evaluation (step = the evaluation's number in
the trial, counted over its folds) and may be pruned there; its value is the mean of its folds'
best scores. The study lives in an Optuna storage (a SQLite file by default, PostgreSQL or MySQL
for workers on several machines, or a journal file), so the same command again adds trials to it.

Under `accelerate launch` only the main process talks to the storage: it asks for a trial and
broadcasts the trial's values, and its pruning decisions, to the other processes, which train
the same trial with it.
"""

from __future__ import annotations

import gc
import importlib.util
import itertools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import sqlalchemy
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from bertreg import config, cv, data, demo, files, metrics, plots
from bertreg.config import Config
from bertreg.engine import EvalCallback
from bertreg.errors import UserError
from bertreg.model import resolve_model_path

# Keys the tuner sets itself, or that one Accelerator for the whole study fixes: not searchable.
FIXED_KEYS = {"experiment", "output_dir", "train.folds", "train.overwrite", "train.metric",
              "train.grad_accum", "train.mixed_precision"}
_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
           "categorical": {"choices"}}
# A worker that dies mid-trial (killed, preempted) leaves its trial RUNNING; with a heartbeat,
# the next trial any worker starts marks it failed once it has been silent this long.
_HEARTBEAT_S, _GRACE_S = 60, 180
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class Param:
    """One dimension of the search space: a config key and the distribution it is drawn from."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))


def _param(key: str, entry: Any) -> Param:
    what = f"tune.space entry '{key}'"
    if not isinstance(entry, dict) or entry.get("type") not in _FIELDS:
        raise UserError(f"{what} must be a mapping with type: float, int or categorical, got {entry!r}")
    kind = entry["type"]
    unknown = set(entry) - _FIELDS[kind] - {"type"}
    if unknown:
        raise UserError(f"{what}: unknown field(s) {sorted(unknown)} for type {kind} "
                        f"(allowed: {', '.join(sorted(_FIELDS[kind]))})")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices or not all(
                c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise UserError(f"{what}: choices must be a non-empty list of numbers, strings or null, got {choices!r}")
        return Param(key, kind, choices=tuple(choices))
    number = int if kind == "int" else (int, float)
    low, high, log, step = entry.get("low"), entry.get("high"), entry.get("log", False), entry.get("step")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise UserError(f"{what}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if low >= high:
        raise UserError(f"{what}: low ({low}) must be below high ({high})")
    if not isinstance(log, bool):
        raise UserError(f"{what}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"{what}: a log range needs low > 0, got {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            raise UserError(f"{what}: step must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
        if log:
            raise UserError(f"{what}: step and log cannot be combined (Optuna draws a log range continuously)")
    return Param(key, kind, low, high, log, step)


def parse_space(cfg: Config) -> list[Param]:
    """The search space of tune.space, checked: real config keys, sane ranges, valid end values."""
    space = []
    base = cfg.to_dict()
    for key, entry in cfg.tune.space.items():
        config.check_key(key)
        if key in FIXED_KEYS or key.startswith("tune."):
            raise UserError(f"tune.space entry '{key}': this key is fixed during a study and cannot be searched")
        param = _param(key, entry.to_dict() if isinstance(entry, Config) else entry)
        ends = param.choices if param.type == "categorical" else (param.low, param.high)
        for value in ends:  # the config rejects a value the range allows: say so before any trial
            try:
                config.build(base, {key: value})
            except UserError as err:
                raise UserError(f"tune.space entry '{key}': {value!r} is in the range but {err}") from None
        space.append(param)
    return space


def study_name(cfg: Config) -> str:
    return cfg.tune.study or f"{cfg.experiment}_tune"


def study_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / study_name(cfg)


def storage_url(cfg: Config) -> str:
    return cfg.tune.storage or f"sqlite:///{(study_dir(cfg) / 'study.db').resolve()}"


def _shown(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a database URL or `journal:PATH`; one line naming it if it cannot be used."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend  # Optuna >= 4.0

        path = Path(url[len("journal:"):]).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"storage {url}: folder {path.parent} does not exist")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    # SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3; take psycopg2 when only it is installed
    if url.startswith("postgresql://") and not importlib.util.find_spec("psycopg") and importlib.util.find_spec("psycopg2"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    # a host that drops packets would otherwise hang the command for minutes
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else {}
    for attempt in itertools.count(1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=_HEARTBEAT_S, grace_period=_GRACE_S)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            # Workers started together on an empty database race to create Optuna's tables
            # (PostgreSQL: duplicate key in pg_type); the losers find them made when they retry.
            racing = isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError))
            if not racing or attempt == _CREATE_ATTEMPTS:
                raise UserError(f"cannot open the study storage {_shown(url)}: {_reason(err)}") from None
            time.sleep(attempt)


def _reason(err: Exception) -> str:
    if isinstance(err.__cause__, ModuleNotFoundError):  # SQLAlchemy >= 2.1 reads postgresql:// as psycopg 3
        return (f"its database driver, Python module '{err.__cause__.name}', is not installed "
                f"(pip install it, or name an installed one: postgresql+psycopg2://...)")
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _sampler(cfg: Config, n_existing: int) -> optuna.samplers.BaseSampler:
    # The seed is mixed with the study's trial count, so that a resumed study does not draw its
    # first random trials again. constant_liar keeps parallel workers off each other's running trials.
    base = cfg.tune.sampler_seed if cfg.tune.sampler_seed is not None else cfg.seed
    seed = int(np.random.SeedSequence([base, n_existing]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_evals)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, t.warmup_evals))
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, metric: str) -> optuna.Study:
    """Create the study, or load it to add trials; the metric must be the one it was created with."""
    name = study_name(cfg)
    if cfg.tune.storage is None:
        study_dir(cfg).mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url(cfg))
    direction = "maximize" if metrics.GREATER_IS_BETTER[metric] else "minimize"
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                pruner=_pruner(cfg))
    study.sampler = _sampler(cfg, len(study.get_trials(deepcopy=False)))
    known = study.user_attrs.get("metric")
    if known is None:
        study.set_user_attr("metric", metric)
    elif known != metric:
        raise UserError(f"study '{name}' optimises {known}, but this config is scored by {metric}: "
                        f"set tune.study to another name")
    return study


def trial_config(cfg: Config, params: dict[str, Any], number: int) -> Config:
    """The trial's full config: the study's config with the trial's values, in its own run folder."""
    return config.build(cfg.to_dict(), {**params, "output_dir": str(study_dir(cfg) / "trials"),
                                        "experiment": f"trial_{number}", "train.folds": list(cfg.tune.folds),
                                        "train.overwrite": True})


def _share(obj: Any, accelerator: Accelerator) -> Any:
    """The main process's `obj` in every process (itself with one process)."""
    return broadcast_object_list([obj])[0] if accelerator.num_processes > 1 else obj


def _pruning_callback(trial: optuna.Trial | None, accelerator: Accelerator) -> EvalCallback:
    evaluations = itertools.count()

    def on_eval(step: int, score: float) -> None:
        k = next(evaluations)
        prune = False
        if trial is not None:  # the main process: the others follow its decision
            trial.report(score, k)
            prune = trial.should_prune()
        if _share(prune, accelerator):
            raise optuna.TrialPruned(f"pruned at evaluation {k} (step {step}), score {score:.4f}")

    return on_eval


def _release(accelerator: Accelerator) -> None:
    """Free the last trial's model, optimizer and device memory before the next trial builds its own."""
    accelerator.free_memory()
    gc.collect()  # a failed or pruned trial's traceback holds its model in a reference cycle
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _drop_weights(run: Path) -> None:
    for weights in run.glob("fold_*/*.safetensors"):
        weights.unlink()


def _train_trial(cfg: Config, params: dict[str, Any], number: int, accelerator: Accelerator,
                 trial: optuna.Trial | None = None) -> float:
    """Train the trial's folds (in every process); its value is the mean of the folds' best scores."""
    run_cfg = None
    try:
        run_cfg = trial_config(cfg, params, number)
        summary = cv.run(run_cfg, accelerator, on_eval=_pruning_callback(trial, accelerator))
    except optuna.TrialPruned:
        raise
    except Exception as err:  # NaN loss, out of memory, a bug: the trial fails, the study goes on
        if trial is not None:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:1000])
        raise
    finally:
        if run_cfg is not None and not cfg.tune.keep_models and accelerator.is_main_process:
            _drop_weights(cv.run_dir(run_cfg))
    scores = [f["score"] for f in summary["folds"]]
    if trial is not None:
        trial.set_user_attr("fold_scores", scores)
    return float(np.mean(scores))


def _follow(cfg: Config, accelerator: Accelerator) -> None:
    """A non-main process: train each trial the main process broadcasts, until it sends None."""
    while (message := _share(None, accelerator)) is not None:
        number, params = message
        try:
            _train_trial(cfg, params, number, accelerator)
        except Exception:  # the main process records the trial's outcome
            pass
        _release(accelerator)


def _check_inputs(cfg: Config) -> None:
    """Data and model problems stop the command now, rather than failing every trial alike."""
    d = cfg.data
    if d.make_demo:
        demo.ensure_demo(d.train_csv)
    data.load_train(d.train_csv, d.id_col, d.text_col, config.target_cols(cfg), d.group_col, d.n_folds)
    resolve_model_path(cfg.model.name_or_path)


def run(cfg: Config, accelerator: Accelerator | None = None) -> optuna.Study | None:
    """Add cfg.tune.n_trials trials to the study, then write its outputs; the study (None off the main process)."""
    space = parse_space(cfg)
    metric = cfg.train.metric or metrics.default_metric(len(config.target_cols(cfg)))
    _check_inputs(cfg)
    accelerator = accelerator or cv.make_accelerator(cfg)
    if not accelerator.is_main_process:
        _follow(cfg, accelerator)
        return None

    def objective(trial: optuna.Trial) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        print(f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()), flush=True)
        _share((trial.number, params), accelerator)
        return _train_trial(cfg, params, trial.number, accelerator, trial)

    try:
        study = open_study(cfg, metric)
        if cfg.tune.n_trials:
            study.optimize(objective, n_trials=cfg.tune.n_trials, timeout=cfg.tune.timeout, catch=(Exception,),
                           callbacks=[lambda _study, _trial: _release(accelerator)])
    finally:
        _share(None, accelerator)  # releases the other processes, also when the main one stops on an error
    write_outputs(study, cfg, space)
    return study


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_outputs(study: optuna.Study, cfg: Config, space: list[Param]) -> None:
    """trials.csv, best.yaml, the plots, and the summary table on stdout."""
    out = study_dir(cfg)
    files.write_csv(out / "trials.csv", study.trials_dataframe())
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    print(summary_table(study))
    if not complete:
        print(f"no trial of study '{study.study_name}' has completed yet: no best.yaml; trials in {out}/trials.csv")
        return
    best = study.best_trial
    name = f"{study.study_name}_best"
    best_cfg = config.build(cfg.to_dict(), {**best.params, "experiment": name})
    path = out / "best.yaml"
    files.write_text(path, f"# study '{study.study_name}', trial {best.number}: {study.user_attrs.get('metric')} "
                           f"{best.value:.5f} on folds {list(cfg.tune.folds)}\n"
                           f"#   python src/train.py --config {path}\n"
                           + yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    made = save_plots(study, out, [p.key for p in space if p.type != "categorical"], len(complete))
    print(f"best trial {best.number}: {study.user_attrs.get('metric')} {best.value:.5f} with "
          + ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
          + f"\nbest config: {path}  (train it: python src/train.py --config {path})"
          + f"\ntrials: {out / 'trials.csv'}; plots: {', '.join(made)}")


def summary_table(study: optuna.Study, top: int = 10) -> str:
    """Counts per state, then the best trials (and failures with their reasons) as a table."""
    trials = study.get_trials(deepcopy=False)
    counts = pd.Series([t.state.name.lower() for t in trials]).value_counts()
    head = f"study '{study.study_name}': {len(trials)} trials (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    rows = []
    for t in trials:
        complete = t.state == optuna.trial.TrialState.COMPLETE
        note = t.user_attrs.get("fail_reason", "")
        if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            last = max(t.intermediate_values)
            note = f"pruned at evaluation {last}, score {t.intermediate_values[last]:.4f}"
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value if complete else None,
                     **{k: _fmt(v) for k, v in t.params.items()}, "note": note[:80]})
    if not rows:
        return head
    table = pd.DataFrame(rows)
    table = table.sort_values("value", ascending=study.direction == optuna.study.StudyDirection.MINIMIZE,
                              na_position="last", kind="stable")
    return head + "\n" + table.head(top).astype(object).fillna("").to_string(index=False)


def save_plots(study: optuna.Study, out: Path, numeric_keys: list[str], n_complete: int) -> list[str]:
    """history.png, slice.png, and with 2+ complete trials importances.png and contour.png; the files made."""
    from optuna.visualization import matplotlib as vis

    makers = {"history.png": lambda: vis.plot_optimization_history(study),
              "slice.png": lambda: vis.plot_slice(study)}
    if n_complete >= 2:  # importances and contours need at least two points
        makers["importances.png"] = lambda: vis.plot_param_importances(study)
        if len(numeric_keys) >= 2:
            makers["contour.png"] = lambda: vis.plot_contour(study, params=numeric_keys[:2])
    made = []
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = make()
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. no variation to rank yet
            print(f"{name} skipped: {err}")
            continue
        figure = np.ravel(axes)[0].figure
        plots.save_figure(figure, out / name)
        made.append(name)
    return made
