"""K-fold fine-tuning of a BERT-family regressor, with backbone dropout off by default.

    accelerate launch src/train.py --config configs/demo.yaml [section.key=value ...]
    python src/train.py --config configs/demo.yaml train.lr=3e-5 train.folds=[0,1]

Results go to {output_dir}/{experiment}/: config.yaml, folds.csv, fold_<k>/ (a loadable model),
oof.csv, metrics.json and curves.png. The same command again resumes: complete folds are kept.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg import config, cv  # noqa: E402
from bertreg.errors import cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml", help="experiment YAML (default: the demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=3e-5")
    args = parser.parse_args()
    cv.run(config.load(args.config, args.overrides))


if __name__ == "__main__":
    cli(main)
