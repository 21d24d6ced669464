"""Lay out finished runs and the kit as a Kaggle dataset folder for an internet-off submission notebook.

    python src/export.py runs/A [runs/B ...] --out kaggle/NAME [--half] [--user KAGGLE_USER] [--title TITLE]
    kaggle datasets create -p kaggle/NAME --dir-mode tar

kaggle/NAME/ gets runs/<run>/ (configs, metrics, OOF predictions, every complete fold model),
src/ (the kit, for the notebook to import) and dataset-metadata.json (id USER/NAME; the user
defaults to $KAGGLE_USERNAME). --half stores fp16 weights: half the upload.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg.errors import cli  # noqa: E402
from bertreg.export import export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders ({output_dir}/{experiment})")
    parser.add_argument("--out", required=True, help="the dataset folder, e.g. kaggle/my-models (its name is the slug)")
    parser.add_argument("--half", action="store_true", help="store fp16 weights (half the size)")
    parser.add_argument("--user", help="Kaggle user name for the dataset id (default: $KAGGLE_USERNAME)")
    parser.add_argument("--title", help="dataset title, 6 to 50 characters (default: the slug)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args()
    export(args.runs, args.out, half=args.half, user=args.user, title=args.title, overwrite=args.overwrite)


if __name__ == "__main__":
    cli(main)
