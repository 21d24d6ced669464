"""Backbone dropout p against 0: the same fold, seed and budget trained twice, both validation curves in one PNG.

    python src/bench.py dropout-ab [--config configs/dropout_ab.yaml] [--p 0.1] [--rows 800] [--model SPEC]
                                   [--json FILE] [key=value ...]

Each arm is an ordinary run of the trainer (`cv.run`) under {output_dir}/{experiment}_p{p}/, so
a finished arm is kept when the command runs again (set train.overwrite=true to retrain). The
summary gives each arm's best and final validation score and the curve's roughness: the standard
deviation of the change from one evaluation to the next.

`--rows N` trains on a seeded sample of N rows of the training CSV (written to
{output_dir}/train_rows<N>.csv, outside the project), so that both arms fit a shared CPU; on a GPU
pass --rows 0 for the whole table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bertreg import config, cv, data, files, metrics, plots
from bertreg.config import Config
from bertreg.errors import UserError

DEFAULT_CONFIG = "configs/dropout_ab.yaml"


def arm_config(base: Config, p: float) -> Config:
    """The base config with backbone dropout p, under its own experiment name."""
    return config.build(base.to_dict(), {"experiment": f"{base.experiment}_p{p:g}", "model.backbone_dropout": p})


def roughness(scores: np.ndarray) -> float:
    """The standard deviation of the step-to-step change of a validation curve."""
    return float(np.diff(scores).std()) if len(scores) > 2 else float("nan")


def summarize_arm(cfg: Config, fold: int) -> dict[str, Any]:
    fold_dir = cv.run_dir(cfg) / f"fold_{fold}"
    hist = pd.read_csv(fold_dir / "history.csv")
    scores = hist["val_score"].to_numpy(dtype=float)
    metric = cfg.train.metric or metrics.default_metric(len(config.target_cols(cfg)))
    best = int(np.argmin(scores) if metric != "pearson" else np.argmax(scores))
    return {"backbone_dropout": cfg.model.backbone_dropout, "run": str(cv.run_dir(cfg)), "metric": metric,
            "best": float(scores[best]), "best_step": int(hist["step"].iloc[best]), "final": float(scores[-1]),
            "roughness": roughness(scores), "n_evals": len(scores),
            "steps": hist["step"].astype(int).tolist(), "val_score": scores.tolist()}


def plot_arms(arms: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for arm in arms:
        line, = ax.plot(arm["steps"], arm["val_score"], marker=".",
                        label=f"backbone dropout {arm['backbone_dropout']:g}: best {arm['best']:.4f}, "
                              f"final {arm['final']:.4f}, roughness {arm['roughness']:.4f}")
        ax.scatter([arm["best_step"]], [arm["best"]], color=line.get_color(), s=60, zorder=3, edgecolor="black")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {arms[0]['metric']}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path)


def sample_rows(cfg: Config, rows: int) -> str:
    """A seeded sample of the training CSV, written once next to the arms; returns its path."""
    path = Path(cfg.output_dir) / f"train_rows{rows}.csv"
    if not path.is_file():
        df = data.read_csv(cfg.data.train_csv, "train CSV", cfg.data.id_col)
        if rows < len(df):
            df = df.sample(n=rows, random_state=cfg.seed).sort_index()
        files.write_csv(path, df)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.py dropout-ab", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the budget (default {DEFAULT_CONFIG})")
    parser.add_argument("--p", type=float, default=0.1, help="backbone dropout of the 'on' arm (default 0.1)")
    parser.add_argument("--rows", type=int, default=800,
                        help="train on a seeded sample of this many rows (default 800; 0 = all)")
    parser.add_argument("--model", help="backbone to use instead of the config's model.name_or_path")
    parser.add_argument("--json", help="summary file (default {output_dir}/{experiment}.json, next to the PNG)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    args = parser.parse_args()
    if not 0 < args.p < 1:
        raise UserError(f"--p must be in (0, 1), got {args.p}")
    overrides = list(args.overrides) + ([f"model.name_or_path={args.model}"] if args.model else [])
    base = config.load(args.config, overrides)
    if args.rows < 0:
        raise UserError(f"--rows must be >= 0, got {args.rows}")
    if args.rows:
        base = config.build(base.to_dict(), {"data.train_csv": sample_rows(base, args.rows)})
    folds = base.train.folds
    if folds is None or len(folds) != 1:
        raise UserError(f"train.folds must name exactly one fold for the A/B, got {folds!r} (e.g. train.folds=[0])")
    fold = folds[0]

    arms = []
    for p in (args.p, 0.0):
        cfg = arm_config(base, p)
        print(f"== backbone dropout {p:g}: {cv.run_dir(cfg)}", flush=True)
        cv.run(cfg)
        arms.append(summarize_arm(cfg, fold))

    out = Path(base.output_dir)
    png = out / f"{base.experiment}.png"
    on, off = arms
    rows = f", {args.rows} rows" if args.rows else ""
    plot_arms(arms, png, f"fold {fold} of {base.data.n_folds}{rows}, {Path(str(base.model.name_or_path)).name}: "
                         f"backbone dropout {args.p:g} vs 0")
    summary = {"fold": fold, "model": base.model.name_or_path, "rows": args.rows or None,
               "config": base.to_dict(), "arms": arms,
               "best_diff": on["best"] - off["best"], "final_diff": on["final"] - off["final"],
               "roughness_ratio": on["roughness"] / off["roughness"] if off["roughness"] else None,
               "png": str(png)}
    files.write_json(args.json or out / f"{base.experiment}.json", summary)
    for arm in arms:
        print(f"backbone dropout {arm['backbone_dropout']:<4g} best {arm['metric']} {arm['best']:.4f} "
              f"(step {arm['best_step']}) | final {arm['final']:.4f} | roughness {arm['roughness']:.4f} "
              f"over {arm['n_evals']} evaluations")
    ratio = summary["roughness_ratio"]
    print(f"dropout {args.p:g} minus dropout 0: best {summary['best_diff']:+.4f}, final {summary['final_diff']:+.4f}"
          + (f", roughness x{ratio:.2f}" if ratio else ""))
    print(f"plot: {png}")
