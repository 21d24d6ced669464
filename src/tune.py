"""Optuna search over learning rate, head dropout, or any config keys (tune.space): resumable, prunable, shareable.

    python src/tune.py --config configs/demo.yaml [--n-trials N] [--timeout S] [--study NAME] [--storage URL] [key=value ...]
    accelerate launch src/tune.py --config configs/demo.yaml --n-trials 20

Each trial trains the folds tune.folds (default fold 0). The study lives in
{output_dir}/{study}/study.db unless --storage names a shared database (postgresql://...); the
same command again adds trials to it. Results in {output_dir}/{study}/: best.yaml (train it with
src/train.py), trials.csv, history/slice/importances/contour PNGs.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg import config, tuning  # noqa: E402
from bertreg.errors import cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="experiment YAML (default: the demo)")
    parser.add_argument("--n-trials", type=int, help="trials to add to the study (tune.n_trials; 0 = only rewrite the outputs)")
    parser.add_argument("--timeout", type=float, help="seconds after which no new trial starts (tune.timeout)")
    parser.add_argument("--study", help="study name (tune.study; default {experiment}_tune)")
    parser.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql://user:pass@host/db (tune.storage)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. tune.folds=[0,1]")
    args = parser.parse_args()
    flags = {"tune.n_trials": args.n_trials, "tune.timeout": args.timeout, "tune.study": args.study,
             "tune.storage": args.storage}
    overrides = {**config.parse_overrides(args.overrides), **{k: v for k, v in flags.items() if v is not None}}
    tuning.run(config.build(config.read_yaml(args.config), overrides))


if __name__ == "__main__":
    cli(main)
