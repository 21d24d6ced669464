"""Fold-ensemble inference: every complete fold of one or several runs, blended into a submission.

Each fold's model is rebuilt as trained (`load_fold_model`), fed with its own tokenizer and
max_len, and predicts in length-sorted batches (`engine.predict`); the folds of a run are
averaged and the runs blended (`bertreg.blend`). All inputs are checked before a model is
loaded, and the submission is checked again before it is written: the sample submission's
columns and row order, every test id exactly once, finite values. Beside it go
<stem>_parts.csv (every run's and every fold's predictions, to re-weight without the models) and
<stem>_weights.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from bertreg import blend, data, engine, files
from bertreg.cv import inference_dtype
from bertreg.cv import mixed_precision as precision_for
from bertreg.errors import UserError
from bertreg.model import FrozenCompiled, cast_for_inference, load_fold_model
from bertreg.runs import Run, load_runs, select_folds


def resolve_inputs(runs: list[Run], test: str | Path | None, sample: str | Path | None
                   ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The checked test table, and the sample submission if there is one.

    Without --test both come from the first run's config; a --test alone has no sample.
    """
    first = runs[0]
    if test is None:
        test, sample = first.cfg.data.test_csv, first.cfg.data.sample_submission
        if not test:
            raise UserError(f"no test CSV: give --test (data.test_csv is not set in {first.path}/config.yaml)")
        if not Path(test).is_file():
            raise UserError(f"test CSV not found: {test} (data.test_csv of {first.path}/config.yaml); give --test")
    table = data.load_test(test, first.id_col, first.cfg.data.text_col)
    for text_col in dict.fromkeys(r.cfg.data.text_col for r in runs[1:]):
        data.require_columns(table, [text_col], "test CSV")
        data.check_texts(table, first.id_col, text_col, "test CSV")
    return table, load_sample(sample, table[first.id_col], first.id_col, first.target_cols) if sample else None


def load_sample(path: str | Path, test_ids: pd.Series, id_col: str, target_cols: list[str]) -> pd.DataFrame:
    what = "sample submission"
    table = data.read_csv(path, what, id_col)
    data.require_columns(table, [id_col, *target_cols], what)
    extra = [c for c in table.columns if c not in (id_col, *target_cols)]
    if extra:
        raise UserError(f"{what} {path} has columns the runs do not predict: {', '.join(extra)} "
                        f"(they predict {', '.join(target_cols)})")
    data.check_ids(table, id_col, what)
    ids, expected = set(table[id_col]), set(test_ids)
    if ids != expected:
        missing, unknown = sorted(expected - ids), sorted(ids - expected)
        raise UserError(f"{what} {path} ids differ from the test CSV's: {len(missing)} test ids are not in it"
                        f"{' (' + data.few(missing) + ')' if missing else ''}, {len(unknown)} of its ids are not "
                        f"in the test{' (' + data.few(unknown) + ')' if unknown else ''}")
    return table


def make_accelerator(mixed_precision: str) -> Accelerator:
    """The Accelerator for predicting: `mixed_precision` as a run's train.mixed_precision (auto, no, bf16, fp16).

    Unlike training's (`cv.make_accelerator`) it leaves glibc's allocator as it is: keeping freed
    memory (`cv.keep_freed_memory`) made a fresh process's bf16 MiniLM inference slower here: 384
    rows took 3.9 s with it and 3.2 s without, in four alternating processes.
    """
    return Accelerator(mixed_precision=precision_for(mixed_precision))


def load_for_inference(fold_dir: Path, accelerator: Accelerator, compile: bool = False
                       ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """A fold's model ready to predict on the accelerator's device, its tokenizer and its settings."""
    model, tokenizer, settings = load_fold_model(fold_dir)
    # bf16 weights where the hardware runs bf16 fast: no per-op casts (see README, Speed);
    # prepare_model places the model and, under mixed precision, wraps its forward in autocast
    model = accelerator.prepare_model(cast_for_inference(model, inference_dtype(accelerator)), evaluation_mode=True)
    return (FrozenCompiled(model) if compile else model), tokenizer, settings


def release(accelerator: Accelerator, compiled: bool) -> None:
    """Drop a fold's prepared model before the next fold loads its own."""
    accelerator.free_memory()
    if compiled:
        torch._dynamo.reset()  # the compiled graph holds the fold's weights as constants


def predict_fold(fold_dir: Path, test: pd.DataFrame, batch_size: int, pad_multiple: int,
                 accelerator: Accelerator, label: str | None, compile: bool,
                 tokenized: dict[tuple[str, int], tuple[list[list[int]], int]]) -> tuple[np.ndarray, int]:
    """One fold model's predictions for every test row, in the test's order; and how many texts were cut.

    `tokenized` holds the test's token ids by (text column, max_len) for the next folds of the same
    run, which share its tokenizer: a test set is tokenized once per run, not once per fold.
    """
    model, tokenizer, settings = load_for_inference(fold_dir, accelerator, compile)
    key = (settings["text_col"], settings["max_len"])
    if key not in tokenized:
        tokenized[key] = data.tokenize(tokenizer, test[settings["text_col"]].tolist(), settings["max_len"])
    ids, n_cut = tokenized[key]
    pred = engine.predict(model, data.TokenizedDataset(ids), batch_size, accelerator,
                          data.Collator(tokenizer.pad_token_id, pad_multiple), progress=label)
    release(accelerator, compile)
    bad = ~np.isfinite(pred).all(axis=1)
    if bad.any():
        raise UserError(f"{fold_dir} predicted NaN or inf for {int(bad.sum())} test rows "
                        f"(ids {data.few(test.loc[bad, settings['id_col']].tolist())}); no submission written")
    return pred, n_cut


def build_submission(test: pd.DataFrame, pred: np.ndarray, id_col: str, target_cols: list[str],
                     sample: pd.DataFrame | None) -> pd.DataFrame:
    """The sample's columns and row order (else the test's order, id then targets), checked."""
    sub = pd.DataFrame({id_col: test[id_col].to_numpy()})
    sub[target_cols] = pred
    if sample is not None:
        sub = sample[[id_col]].merge(sub, on=id_col, how="left", validate="one_to_one")[list(sample.columns)]
    check_submission(sub, test[id_col], id_col, target_cols, list(sample.columns) if sample is not None else None)
    return sub


def check_submission(sub: pd.DataFrame, test_ids: pd.Series, id_col: str, target_cols: list[str],
                     columns: list[str] | None) -> None:
    expected = columns or [id_col, *target_cols]
    if list(sub.columns) != expected:
        raise UserError(f"submission columns {list(sub.columns)} are not {expected}; no submission written")
    if sub[id_col].duplicated().any() or set(sub[id_col]) != set(test_ids) or len(sub) != len(test_ids):
        raise UserError("submission ids are not the test ids exactly once each; no submission written")
    values = sub[target_cols].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise UserError("submission has NaN or infinite values; no submission written")


def side_paths(out: Path) -> tuple[Path, Path]:
    """Where the per-run/per-fold predictions and the weights go, beside the submission."""
    return out.with_name(f"{out.stem}_parts.csv"), out.with_name(f"{out.stem}_weights.json")


def make_submission(runs: Sequence[str | Path], test: str | Path | None = None, sample: str | Path | None = None,
                    out: str | Path = "submissions/submission.csv", folds: list[int] | None = None,
                    weights: str = "equal", batch_size: int | None = None,
                    mixed_precision: str | None = None, compile: bool = False) -> pd.DataFrame:
    """Predict the test set with every chosen fold of every run, blend, write the submission; return it.

    mixed_precision: auto | no | bf16 | fp16; None takes the first run's train.mixed_precision.
    compile: each fold's model through torch.compile with freezing (`model.FrozenCompiled`): faster
    per row, for a compile per fold; it pays off on large test sets only (README, Speed).
    """
    out = Path(out)
    ensemble = load_runs(list(runs))
    select_folds(ensemble, folds)
    test_df, sample_df = resolve_inputs(ensemble, test, sample)
    mix = blend.resolve(weights, ensemble)  # before any model runs: a bad spec costs nothing
    first = ensemble[0]
    id_col, cols = first.id_col, first.target_cols

    accelerator = make_accelerator(mixed_precision or first.cfg.train.mixed_precision)
    parts = pd.DataFrame({id_col: test_df[id_col].to_numpy()})
    run_preds = []
    for run in ensemble:
        t = run.cfg.train
        size = batch_size or t.eval_batch_size or 2 * t.batch_size
        fold_preds, tokenized = [], {}
        for k in run.folds:
            pred, n_cut = predict_fold(run.fold_dir(k), test_df, size, t.pad_to_multiple_of, accelerator,
                                       f"{run.name} fold {k}", compile, tokenized)
            parts[[f"{run.name}/fold_{k}/{c}" for c in cols]] = pred
            fold_preds.append(pred)
        if n_cut:
            accelerator.print(f"{run.name}: {n_cut} of {len(test_df)} test texts are longer than train.max_len="
                              f"{t.max_len} tokens and were truncated, as in training")
        run_preds.append(np.mean(fold_preds, axis=0))
        parts[[f"{run.name}/{c}" for c in cols]] = run_preds[-1]
    sub = build_submission(test_df, blend.combine(run_preds, mix.weights), id_col, cols, sample_df)
    parts = parts.set_index(id_col).loc[sub[id_col]].reset_index()  # the submission's row order

    report = []
    for run, w, cv in zip(ensemble, mix.weights, mix.run_cv or [run.cv for run in ensemble]):
        scored = "" if cv is None else f", {'OOF' if mix.method == 'oof' else 'CV'} {run.metric} {cv:.4f}"
        report.append(f"{run.name} ({run.path}): folds {', '.join(map(str, run.folds))}{scored}, weight {w:.3f}")
    if mix.method == "oof":
        report.append(f"blend ({mix.method} weights): OOF {mix.metric} {mix.blend_cv:.4f} "
                      f"on {mix.n_oof} out-of-fold rows all runs share")
    parts_path, weights_path = side_paths(out)
    if accelerator.is_main_process:
        files.write_csv(parts_path, parts)
        files.write_json(weights_path, mix.to_dict(ensemble))
        files.write_csv(out, sub)  # last: a submission exists only once everything beside it does
    accelerator.wait_for_everyone()
    accelerator.print("\n".join(report) + f"\nsubmission: {out} ({len(sub)} rows); per-run and per-fold "
                      f"predictions: {parts_path}; weights: {weights_path}")
    return sub
