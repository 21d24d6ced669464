"""Reading and checking the competition CSVs, tokenizing once, and batching by length.

Everything is validated before training starts, and each problem is one line that names the
file, the column and a few offending ids.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from bertreg.errors import UserError


def few(values: Sequence, n: int = 5) -> str:
    """The first n values for an error message, and how many more there are."""
    # strings as they are, unless a newline or the like would break the one-line message
    shown = ", ".join(v if isinstance(v, str) and v.isprintable() else repr(v) for v in list(values)[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


def read_csv(path: str | Path | None, what: str, id_col: str | None = None) -> pd.DataFrame:
    """Read a CSV (UTF-8, with or without BOM, else Latin-1), ids as strings; one clear line on failure."""
    if not path:
        raise UserError(f"no {what} given")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{what} is empty: {path}")
    dtype = {id_col: str} if id_col else None
    last_error: Exception | None = None
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            df = pd.read_csv(path, dtype=dtype, encoding=encoding, keep_default_na=True)
            break
        except UnicodeDecodeError as err:
            last_error = err
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise UserError(f"{what} {path} cannot be read as CSV: {str(err).strip().splitlines()[0]}") from None
    else:
        raise UserError(f"{what} {path} cannot be decoded: {last_error}")
    if len(df) == 0:
        raise UserError(f"{what} has no rows: {path}")
    df.columns = [str(c).strip() for c in df.columns]
    twice = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if twice:  # " id " and "id" are one column once stripped
        raise UserError(f"{what} has the column {few(twice)} twice: {path}")
    return df


def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what} has no column {few(missing)}; columns present: {few(list(df.columns), 20)}")


def check_ids(df: pd.DataFrame, id_col: str, what: str) -> None:
    ids = df[id_col]
    empty = ids.isna() | (ids.astype(str).str.strip() == "")
    if empty.any():
        raise UserError(f"{what} has {int(empty.sum())} empty ids in column '{id_col}' (rows {few(np.flatnonzero(empty).tolist())})")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise UserError(f"{what} has duplicate ids in column '{id_col}': {few(dup)}")


def check_texts(df: pd.DataFrame, id_col: str, text_col: str, what: str) -> None:
    texts = df[text_col]
    bad = ~texts.map(lambda t: isinstance(t, str) and t.strip() != "")
    if bad.any():
        raise UserError(f"{what} has {int(bad.sum())} empty or non-text values in column '{text_col}' (ids {few(df.loc[bad, id_col].tolist())})")


def check_targets(df: pd.DataFrame, id_col: str, target_cols: Sequence[str], what: str) -> None:
    for col in target_cols:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            pairs = [f"{i}={v!r}" for i, v in zip(df.loc[bad, id_col], df.loc[bad, col])]
            raise UserError(f"{what} column '{col}' has {int(bad.sum())} missing, infinite or non-numeric targets: {few(pairs)}")
        df[col] = values.astype(float)


def load_train(path: str | Path, id_col: str, text_col: str, target_cols: Sequence[str],
               group_col: str | None = None, n_folds: int = 2) -> pd.DataFrame:
    """The training table, checked: ids unique, texts non-empty, targets finite numbers, enough rows."""
    what = "train CSV"
    df = read_csv(path, what, id_col)
    require_columns(df, [id_col, text_col, *target_cols] + ([group_col] if group_col else []), what)
    check_ids(df, id_col, what)
    check_texts(df, id_col, text_col, what)
    check_targets(df, id_col, target_cols, what)
    if group_col and df[group_col].isna().any():
        raise UserError(f"{what} column '{group_col}' has empty groups (ids {few(df.loc[df[group_col].isna(), id_col].tolist())})")
    if len(df) < n_folds:
        raise UserError(f"{what} has {len(df)} rows, fewer than data.n_folds={n_folds}")
    return df.reset_index(drop=True)


def load_test(path: str | Path, id_col: str, text_col: str) -> pd.DataFrame:
    what = "test CSV"
    df = read_csv(path, what, id_col)
    require_columns(df, [id_col, text_col], what)
    check_ids(df, id_col, what)
    check_texts(df, id_col, text_col, what)
    return df.reset_index(drop=True)


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to max_len (keeping the closing special token); and how many were cut."""
    # One token over the limit tells truncated texts apart without tokenizing them in full.
    ids = tokenizer(list(texts), truncation=True, max_length=max_len + 1, add_special_tokens=True)["input_ids"]
    specials = set(tokenizer.all_special_ids)
    cut = 0
    for i, seq in enumerate(ids):
        if len(seq) > max_len:
            cut += 1
            ids[i] = seq[: max_len - 1] + [seq[-1]] if seq[-1] in specials else seq[:max_len]
    return ids, cut


class TokenizedDataset(Dataset):
    """Pre-tokenized texts with optional targets; items carry their row index so order can be restored."""

    def __init__(self, input_ids: Sequence[list[int]], targets: np.ndarray | None = None):
        self.input_ids = input_ids
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict:
        item = {"input_ids": self.input_ids[i], "idx": i}
        if self.targets is not None:
            item["labels"] = self.targets[i]
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def padded_width(longest: int, multiple: int) -> int:
    return int(math.ceil(longest / multiple) * multiple)


def pad_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]], multiple: int = 8) -> float:
    """Padded tokens over tokens computed, for `batches` (lists of row indices) padded as Collator pads them."""
    real = computed = 0
    for batch in batches:
        lens = [lengths[i] for i in batch]
        real += sum(lens)
        computed += padded_width(max(lens), multiple) * len(lens)
    return 1.0 - real / computed if computed else 0.0


class Collator:
    """Dynamic padding to the longest text of the batch, rounded up to a multiple of `multiple`."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        width = padded_width(longest, self.multiple)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[row, :n] = torch.as_tensor(it["input_ids"])
            mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask,
                 "idx": torch.tensor([it["idx"] for it in items], dtype=torch.long)}
        if "labels" in items[0]:
            batch["labels"] = torch.tensor(np.stack([it["labels"] for it in items]), dtype=torch.float32)
        return batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of similar-length texts, for training.

    Each epoch: shuffle the rows, cut them into mega-chunks of `chunk` batches, sort each chunk by
    length, cut it into batches, and shuffle the batches. Batches stay random, padding stays small.
    Every process builds the same batches from the same seed; accelerate shards them.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, chunk: int = 64,
                 group_by_length: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk = chunk
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group_by_length:
            span = self.batch_size * self.chunk
            order = [i for s in range(0, len(order), span)
                     for i in sorted(order[s:s + span], key=lambda j: -self.lengths[j])]
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        # accelerate shards a batch sampler assuming full batches with a short one only at the end
        # (anywhere else it drops the short one and its neighbours): keep the short one last
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        return iter(batches + tail)


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of rows sorted by length, longest first, for evaluation and inference."""
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
