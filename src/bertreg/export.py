"""A Kaggle dataset folder holding finished runs and the kit, for internet-off submission notebooks.

Layout of {out}/ (its folder name is the dataset's slug):
    dataset-metadata.json        ready for `kaggle datasets create -p {out} --dir-mode tar`
    src/                         a copy of the kit's src/: the notebook imports bertreg from here
    runs/<name>/                 config.yaml, metrics.json, folds.csv, oof.csv, curves.png
    runs/<name>/fold_<k>/        every complete fold: the model folder as training saved it

--half stores the weights in fp16 (half the upload); the target scale buffers stay fp32, and
`load_fold_model` loads the weights back into a float32 model.
The folder is built beside {out} and renamed into place at the end: never half-written.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from bertreg import files
from bertreg.errors import UserError
from bertreg.runs import WEIGHTS_FILE, Run, load_runs

KIT_SRC = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.yaml", "metrics.json", "folds.csv", "oof.csv", "curves.png")
FP32_TENSORS = ("target_mean", "target_std")  # map the head's output to target units: kept exact
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,48}[a-z0-9]")


def halve_weights(src: Path, dst: Path) -> None:
    tensors = {name: t.half() if t.is_floating_point() and name not in FP32_TENSORS else t
               for name, t in load_file(str(src)).items()}
    with files.atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def copy_run(run: Run, dst: Path, half: bool) -> int:
    """Copy a run's summary files and complete folds to dst; returns the bytes written."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, dst / name)
    for k in run.folds:
        fold_dst = dst / f"fold_{k}"
        shutil.copytree(run.fold_dir(k), fold_dst, ignore=shutil.ignore_patterns(".*", WEIGHTS_FILE))
        if half:
            halve_weights(run.fold_dir(k) / WEIGHTS_FILE, fold_dst / WEIGHTS_FILE)
        else:
            shutil.copy2(run.fold_dir(k) / WEIGHTS_FILE, fold_dst / WEIGHTS_FILE)
    return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())


def metadata(slug: str, user: str | None, title: str | None) -> dict:
    if not SLUG.fullmatch(slug):
        raise UserError(f"the --out folder's name '{slug}' becomes the Kaggle dataset slug: "
                        f"3 to 50 lowercase letters, digits and hyphens, not starting or ending with a hyphen")
    user = user or os.environ.get("KAGGLE_USERNAME")
    if not user:
        raise UserError("give --user YOUR_KAGGLE_USERNAME (or set KAGGLE_USERNAME): the dataset id is user/slug")
    title = title or (slug if len(slug) >= 6 else f"bertreg {slug}")
    if not 6 <= len(title) <= 50:
        raise UserError(f"--title must be 6 to 50 characters (Kaggle's rule), got {len(title)}: '{title}'")
    return {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "other"}]}


def export(run_paths: list[str | Path], out: str | Path, half: bool = False, user: str | None = None,
           title: str | None = None, overwrite: bool = False) -> Path:
    """Lay out the Kaggle dataset folder `out` for the runs; returns its path."""
    out = Path(out)
    runs = load_runs(run_paths)
    meta = metadata(out.name, user, title)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: give --overwrite to replace it")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        sizes = {run.name: copy_run(run, partial / "runs" / run.name, half) for run in runs}
        shutil.copytree(KIT_SRC, partial / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        files.write_json(partial / "dataset-metadata.json", meta)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old)
        else:
            partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for run in runs:
        print(f"{run.name}: folds {', '.join(map(str, run.folds))} from {run.path}, {sizes[run.name] / 2**20:.0f} MiB"
              f"{' (fp16 weights)' if half else ''}")
    print(f"Kaggle dataset {meta['id']} laid out in {out}/\n"
          f"upload: kaggle datasets create -p {out} --dir-mode tar   (a new version: kaggle datasets version "
          f"-p {out} --dir-mode tar -m MESSAGE)")
    return out
