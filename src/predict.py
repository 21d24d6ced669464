"""Predict a test set with every fold model of one or several runs and write a submission CSV.

    python src/predict.py --runs runs/demo
    python src/predict.py --runs runs/A runs/B --weights oof --test data/test.csv \
        --sample-submission data/sample_submission.csv --out submissions/submission.csv
    accelerate launch src/predict.py --runs runs/A --folds 0,1 --batch-size 64
    python src/predict.py --runs runs/A --compile      # large test sets: torch.compile each fold's model

Within a run the folds are averaged; across runs --weights is equal (default), oof (non-negative
least squares on the runs' out-of-fold predictions; the runs must share folds.csv) or one number
per run. Without --test, the first run's data.test_csv and data.sample_submission are used.
Beside the submission go <stem>_parts.csv (per-run and per-fold predictions) and <stem>_weights.json.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg import inference  # noqa: E402
from bertreg.errors import UserError, cli  # noqa: E402


def fold_list(text: str) -> list[int]:
    try:
        folds = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--folds must be comma-separated fold numbers such as 0,1, got '{text}'") from None
    if any(k < 0 for k in folds):
        raise UserError(f"--folds must be fold numbers >= 0, got '{text}'")
    return folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN_DIR", help="run folders ({output_dir}/{experiment})")
    parser.add_argument("--test", help="test CSV (default: the first run's data.test_csv)")
    parser.add_argument("--sample-submission", help="its columns and row order are the submission's "
                        "(default: the first run's data.sample_submission, only when --test is not given)")
    parser.add_argument("--out", default="submissions/submission.csv", help="submission CSV (default: %(default)s)")
    parser.add_argument("--folds", help="only these folds of every run, e.g. 0,1 (default: every complete fold)")
    parser.add_argument("--weights", default="equal", help="equal | oof | w1,w2,... one per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="rows per batch (default: the run's eval batch size)")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"],
                        help="autocast precision (default: the first run's train.mixed_precision)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each fold's model with freezing: faster per row after a compile of "
                             "some seconds per fold, so it pays off on large test sets only (README, Speed)")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    inference.make_submission(args.runs, test=args.test, sample=args.sample_submission, out=args.out,
                              folds=fold_list(args.folds) if args.folds else None, weights=args.weights,
                              batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                              compile=args.compile)


if __name__ == "__main__":
    cli(main)
