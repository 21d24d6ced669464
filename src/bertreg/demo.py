"""The demo's data: a synthetic readability task the project generates itself, deterministically.

Each excerpt is built from a hidden difficulty d in [0, 1]: harder excerpts have longer
sentences and more long words. The target is a readability-like ease score (higher = easier),
a fixed function of the excerpt's mean sentence length and mean word length, plus a little
noise, on CommonLit's scale (about -3.5 to 1.5). A BERT can learn it from the text alone: the
sentence boundaries and the word-piece count of each word carry all it needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bertreg import files

SHORT = ("the a cat dog sun day red big run sat hat map cup box pen top hot fun net bag "
         "bed bus car egg fox hen jam kid leg man mud nut pig rat sky toy van web yes").split()
MEDIUM = ("garden window yellow river pencil basket market silver winter rabbit summer "
          "teacher doctor farmer orange purple monkey castle dragon forest island letter "
          "people little happy simple quiet family animal picture morning evening").split()
LONG = ("extraordinary responsibility comprehensive consideration international "
        "unquestionably photosynthesis characteristically environmental administration "
        "circumstantial interpretation recommendation infrastructure philosophical "
        "deterioration multiplication transformation approximately contemporaneous "
        "incomprehensible sophisticated revolutionary experimentation accountability").split()


def _excerpt(rng: np.random.Generator, d: float) -> tuple[str, float, float]:
    sentences, n_words, n_chars = [], 0, 0
    for _ in range(int(rng.integers(2, 5))):
        length = max(3, int(round(rng.normal(4 + 14 * d, 1.5))))
        p_long, p_medium = 0.05 + 0.6 * d, 0.3
        words = []
        for _ in range(length):
            u = rng.random()
            pool = LONG if u < p_long else MEDIUM if u < p_long + p_medium else SHORT
            words.append(pool[int(rng.integers(len(pool)))])
        n_words += len(words)
        n_chars += sum(map(len, words))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences), n_words / len(sentences), n_chars / n_words


def make_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text, sentence_len, word_len = _excerpt(rng, float(rng.random()))
        ease = 4.0 - 0.12 * sentence_len - 0.55 * word_len + rng.normal(0, 0.1)
        rows.append({"id": f"demo{seed:02d}_{i:05d}", "excerpt": text, "target": round(ease, 4)})
    return pd.DataFrame(rows)


def write_demo(out_dir: str | Path = "data/demo", n_train: int = 600, n_test: int = 100) -> Path:
    """Write train.csv, test.csv and sample_submission.csv in the competition's format."""
    out = Path(out_dir)
    train = make_frame(n_train, seed=1)
    test = make_frame(n_test, seed=2)
    files.write_csv(out / "train.csv", train)
    files.write_csv(out / "test.csv", test[["id", "excerpt"]])
    files.write_csv(out / "sample_submission.csv", test[["id"]].assign(target=0.0))
    return out


def ensure_demo(train_csv: str | Path) -> None:
    """Generate the demo data beside `train_csv` if it is not there yet."""
    train_csv = Path(train_csv)
    if not train_csv.is_file():
        write_demo(train_csv.parent)
