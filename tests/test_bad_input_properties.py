"""Property-based bad input: random CSVs and override strings either work or give one UserError, never a traceback."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertreg import config, data
from bertreg.errors import UserError

SETTINGS = settings(max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.one_of(
    st.text(max_size=30),
    st.just(""), st.just("   "), st.just("x" * 200_000),  # empty, blank, huge
    st.text(alphabet="é,\"\n\r;ß€\x00\ufeff", max_size=10),  # separators, quotes, newlines, BOM, NUL
)
ids = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.floats(allow_nan=True), st.just(""), st.none(),
                st.just("007"), st.just("7"))
targets = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=4), st.none(),
                    st.just("1e400"), st.just("-0.5"))
column_names = st.one_of(st.sampled_from(["id", "excerpt", "target", " id ", "Target", "extra", ""]),
                         st.text(max_size=6))


@st.composite
def csv_files(draw) -> bytes:
    """A table with a random column set, values of mixed types, in a random encoding; or raw junk bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    n = draw(st.integers(0, 6))
    names = draw(st.lists(column_names, min_size=1, max_size=5))
    strategy = {"id": ids, "excerpt": texts, "target": targets}
    table = pd.DataFrame({f"c{i}": draw(st.lists(strategy.get(name.strip(), texts), min_size=n, max_size=n))
                          for i, name in enumerate(names)})
    table.columns = names  # duplicate and blank names included
    text = table.to_csv(index=False)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    return text.encode(encoding, errors="replace")


def _write(raw: bytes) -> Path:
    f = tempfile.NamedTemporaryFile(suffix=".csv", delete=False)
    f.write(raw)
    f.close()
    return Path(f.name)


@SETTINGS
@given(csv_files(), st.integers(2, 4))
def test_load_train_works_or_says_why(raw, n_folds):
    path = _write(raw)
    try:
        df = data.load_train(path, "id", "excerpt", ["target"], n_folds=n_folds)
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    finally:
        path.unlink()
    # what is accepted is what training needs
    assert len(df) >= n_folds and df["id"].is_unique
    assert all(isinstance(i, str) and i.strip() for i in df["id"])
    assert all(isinstance(t, str) and t.strip() for t in df["excerpt"])
    assert np.isfinite(df["target"].to_numpy(dtype=float)).all()


@SETTINGS
@given(csv_files())
def test_load_test_works_or_says_why(raw):
    path = _write(raw)
    try:
        df = data.load_test(path, "id", "excerpt")
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    finally:
        path.unlink()
    assert len(df) > 0 and df["id"].is_unique
    assert all(isinstance(t, str) and t.strip() for t in df["excerpt"])


def test_latin1_and_bom_files_are_read(tmp_path):
    table = pd.DataFrame({"id": ["a", "b"], "excerpt": ["café crème", "naïve"], "target": [0.5, -1.0]})
    for encoding in ("utf-8-sig", "latin-1"):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(table.to_csv(index=False).encode(encoding))
        df = data.load_train(path, "id", "excerpt", ["target"], n_folds=2)
        assert list(df.columns[:3]) == ["id", "excerpt", "target"] and df["excerpt"].tolist() == table["excerpt"].tolist()


keys = st.one_of(st.sampled_from(config.KNOWN_KEYS), st.text(max_size=12),
                 st.sampled_from(["train", "train.", ".lr", "train.lr.x", "data.target_cols.0", "model"]))
values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["null", "[0, 1]", "[", "{a: 1}", "1e400", "-1", "nan", ".inf", "true", "no", "[[1]]",
                     "!!python/object:os.system", "&a [*a]", "0x10", "1_000", "2e-5", "'3'", "{}", "[]"]),
    st.integers().map(str), st.floats().map(str),
)


@st.composite
def overrides(draw) -> list[str]:
    items = draw(st.lists(st.tuples(keys, st.sampled_from(["=", "", "==", " = "]), values), max_size=4))
    junk = draw(st.lists(st.text(max_size=10), max_size=1))
    return [k + sep + v for k, sep, v in items] + junk


@SETTINGS
@given(overrides())
def test_overrides_work_or_say_why(items):
    base = {"model": {"name_or_path": "some/model"}, "data": {"train_csv": "train.csv"}}
    try:
        cfg = config.build(base, config.parse_overrides(items))
    except UserError as err:
        assert str(err) and "\n" not in str(err)
        return
    # a config that builds is one the trainer can use
    assert isinstance(cfg.train.lr, (int, float)) and math.isfinite(cfg.train.lr) and cfg.train.lr > 0
    assert isinstance(cfg.train.batch_size, int) and cfg.train.batch_size >= 1
    assert all(isinstance(c, str) and c for c in config.target_cols(cfg))
