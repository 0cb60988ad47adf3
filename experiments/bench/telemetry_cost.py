"""Cost of the training telemetry: median optimizer-step time with all callbacks (default intervals) vs none.

    PYTHONPATH=src python experiments/bench/telemetry_cost.py                  # both models
    PYTHONPATH=src python experiments/bench/telemetry_cost.py --steps 100 --steps-100m 24 --models tiny,100m

Models (both wrapped with PEFT LoRA r=8 on q,k,v,o,gate,up,down; batch 8 x 128 tokens, a few pad tokens):

- ``tiny``: ``astra.models.build.tiny_llama(vocab_size=256)`` (~0.9M parameters before LoRA);
- ``100m``: a LLaMA built from a config: hidden 768, 12 layers, 12 heads, intermediate 2048, vocab 32000,
  tied embeddings (~110M parameters).

Fairness: both variants run interleaved in one process and one Lightning ``Trainer``. The telemetry
callbacks (``default_callbacks()``, i.e. ``conf/callbacks/default.yaml``) sit behind a gate that forwards
the per-step hooks only on "on" steps; steps are taken in pairs and a seeded coin decides which step of
each pair is "on", so drift (thermal, allocator, data order) hits both variants alike and interval events
(per-type norms every 25 steps, effective rank every 100, throughput every 25, flushes every 25 records)
land on "on" steps at their natural rate in expectation. A step's time is the wall time from one
``on_train_batch_start`` to the next (forward, backward, optimizer, every hook, logging, data). The first
``--warmup`` steps are dropped. A ``CSVLogger`` in a temporary folder receives every metric.

Reported: median step time of each variant and the overhead of the medians; the median over pairs of
``t_on / t_off - 1`` (robust to slow spells of a shared machine: both steps of a pair run back to back);
the overhead of the means (which include the interval events that fell on "on" steps, and any slow
spell); the time of one full effective-rank computation and its amortised share at the default interval;
an amortised total (paired median overhead + rank share). Because a shared machine makes step times
noisy, the hooks are also timed directly after training (real gradients present, median of 200 calls):
``hooks ms`` is one ordinary step's telemetry work, and ``est. %`` = (ordinary step + per-type extra / 25 +
effective rank / 100) / median step without telemetry. Per-step times are in the JSON. Target: <= 3 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader, Dataset

from astra.models.build import build_llama_from_config, tiny_llama
from astra.telemetry.grad_norm import GradNormMonitor
from astra.telemetry.rank import EffectiveRankMonitor
from astra.telemetry.summary import default_callbacks

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "telemetry_cost.json"


# ---------------------------------------------------------------------- models and data
def build_model(name: str):
    if name == "tiny":
        model, vocab = tiny_llama(vocab_size=256, seed=0), 256
    elif name == "100m":
        vocab = 32000
        model = build_llama_from_config(
            seed=0, vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=12, intermediate_size=2048, max_position_embeddings=512, tie_word_embeddings=True,
        )
    else:
        raise ValueError(name)
    total = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    return model, vocab, total


class Synthetic(Dataset):
    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, seq_len), generator=g)
        pads = torch.randint(0, seq_len // 8, (n,), generator=g)
        self.mask = (torch.arange(seq_len)[None, :] < (seq_len - pads)[:, None]).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids, mask = self.ids[i], self.mask[i]
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class LM(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-4)


# ---------------------------------------------------------------------- gate and timer
class Gate(pl.Callback):
    """Forwards every hook to ``inner``; the per-step hooks only on steps where ``schedule(step)``."""

    PER_STEP = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")
    ALWAYS = ("setup", "on_fit_start", "on_train_start", "on_train_end", "on_exception", "teardown",
              "on_validation_start", "on_validation_end")

    def __init__(self, inner: list[pl.Callback], schedule: Callable[[int], bool]):
        self.inner, self.schedule, self.active = inner, schedule, True
        for hook in self.ALWAYS:
            setattr(self, hook, self._forward(hook, gated=False))
        for hook in self.PER_STEP[1:]:
            setattr(self, hook, self._forward(hook, gated=True))

    def _forward(self, hook: str, gated: bool):
        def call(*args, **kwargs):
            if gated and not self.active:
                return
            for callback in self.inner:
                getattr(callback, hook)(*args, **kwargs)

        return call

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active = self.schedule(trainer.global_step)
        if self.active:
            for callback in self.inner:
                callback.on_train_batch_start(trainer, pl_module, batch, batch_idx)


class StepTimer(pl.Callback):
    """Wall time between consecutive ``on_train_batch_start`` calls (must be the first callback)."""

    def __init__(self):
        self.marks: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks.append((trainer.global_step, time.perf_counter()))
        if len(self.marks) > 1 and trainer.global_step % 25 == 0:
            step_ms = 1000 * (self.marks[-1][1] - self.marks[-2][1])
            print(f"  step {trainer.global_step}: {step_ms:.1f} ms", file=sys.stderr, flush=True)

    def on_train_end(self, trainer, pl_module):
        self.marks.append((trainer.global_step, time.perf_counter()))

    def step_times(self) -> dict[int, float]:
        return {s: t1 - t0 for (s, t0), (_, t1) in zip(self.marks, self.marks[1:])}


def pair_schedule(steps: int, seed: int) -> list[bool]:
    rng = random.Random(seed)
    on: list[bool] = []
    for _ in range((steps + 1) // 2 + 1):
        first = rng.random() < 0.5
        on += [first, not first]
    return on


# ---------------------------------------------------------------------- direct hook cost
def hook_cost_ms(trainer, module, telemetry, batch, per_type: bool, n: int = 200) -> float:
    """Median wall time of one step's worth of telemetry hooks (real gradients present), called directly.

    ``per_type``: force the per-type/per-factor grouping on every call (else never). Flushes happen every
    ``flush_every_n_steps`` calls as in training, so their cost is included at its natural rate.
    """
    grad = next(cb for cb in telemetry if isinstance(cb, GradNormMonitor))
    saved = grad.per_type_every_n_steps, grad.per_type_first_n_steps
    grad.per_type_every_n_steps, grad.per_type_first_n_steps = (1, 0) if per_type else (0, 0)
    module.zero_grad()
    loss = module.model(**batch).loss
    loss.backward()
    outputs, optimizer = {"loss": loss.detach()}, trainer.optimizers[0]
    times = []
    for _ in range(n):
        started = time.perf_counter()
        for callback in telemetry:
            callback.on_train_batch_start(trainer, module, batch, 0)
        for callback in telemetry:
            callback.on_before_optimizer_step(trainer, module, optimizer)
        for callback in telemetry:
            callback.on_train_batch_end(trainer, module, outputs, batch, 0)
        times.append(time.perf_counter() - started)
    grad.per_type_every_n_steps, grad.per_type_first_n_steps = saved
    module.zero_grad()
    return 1000 * statistics.median(times)


# ---------------------------------------------------------------------- one model
def bench_model(name: str, steps: int, warmup: int, batch_size: int, seq_len: int, seed: int) -> dict[str, Any]:
    model, vocab, total_params = build_model(name)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    module = LM(model)
    loader = DataLoader(Synthetic((steps + 2) * batch_size, seq_len, vocab, seed), batch_size=batch_size, shuffle=False)
    schedule = pair_schedule(steps, seed)
    telemetry = default_callbacks()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="auto", devices=1, max_steps=steps, logger=CSVLogger(tmp, name="bench"),
            callbacks=[timer, Gate(telemetry, lambda s: schedule[s])], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, default_root_dir=tmp,
        )
        started = time.perf_counter()
        trainer.fit(module, loader)
        wall = time.perf_counter() - started
        batch = next(iter(DataLoader(loader.dataset, batch_size=batch_size)))
        batch = {k: v.to(module.device) for k, v in batch.items()}
        every_step_ms = hook_cost_ms(trainer, module, telemetry, batch, per_type=False)
        per_type_ms = hook_cost_ms(trainer, module, telemetry, batch, per_type=True)
    times = timer.step_times()
    on = [t for s, t in times.items() if s >= warmup and schedule[s]]
    off = [t for s, t in times.items() if s >= warmup and not schedule[s]]
    # Paired ratios: the two steps of a pair ran back to back, so a slow spell of the machine hits both.
    ratios = []
    for first in range(warmup + warmup % 2, steps - 1, 2):
        if first in times and first + 1 in times:
            t_on, t_off = (times[first], times[first + 1]) if schedule[first] else (times[first + 1], times[first])
            ratios.append(t_on / t_off)

    rank_monitor = next(cb for cb in telemetry if isinstance(cb, EffectiveRankMonitor))
    rank_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        rank_monitor.compute(module)
        rank_times.append(time.perf_counter() - t0)
    rank_ms = 1000 * statistics.median(rank_times)

    median_on, median_off = statistics.median(on), statistics.median(off)
    mean_on, mean_off = statistics.fmean(on), statistics.fmean(off)
    median_pct = 100 * (median_on / median_off - 1)
    rank_pct = 100 * (rank_ms / 1000) / (rank_monitor.every_n_steps * median_off)
    grad_monitor = next(cb for cb in telemetry if isinstance(cb, GradNormMonitor))
    per_type_extra_ms = max(per_type_ms - every_step_ms, 0.0)
    estimated_ms = (every_step_ms + per_type_extra_ms / grad_monitor.per_type_every_n_steps
                    + rank_ms / rank_monitor.every_n_steps)
    return {
        "model": name,
        "params_total": total_params,
        "params_trainable": trainable,
        "steps": steps,
        "warmup_dropped": warmup,
        "n_on": len(on),
        "n_off": len(off),
        "median_step_ms_none": 1000 * median_off,
        "median_step_ms_all": 1000 * median_on,
        "median_overhead_pct": median_pct,
        "paired_median_overhead_pct": 100 * (statistics.median(ratios) - 1),
        "n_pairs": len(ratios),
        "mean_step_ms_none": 1000 * mean_off,
        "mean_step_ms_all": 1000 * mean_on,
        "mean_overhead_pct": 100 * (mean_on / mean_off - 1),
        "rank_compute_ms": rank_ms,
        "rank_every_n_steps": rank_monitor.every_n_steps,
        "rank_amortised_pct": rank_pct,
        "amortised_total_pct": 100 * (statistics.median(ratios) - 1) + rank_pct,
        "hook_ms_every_step": every_step_ms,
        "hook_ms_per_type_step": per_type_ms,
        "estimated_amortised_ms": estimated_ms,
        "estimated_amortised_pct": 100 * estimated_ms / (1000 * median_off),
        "wall_s": wall,
        "step_ms": {str(s): round(1000 * t, 3) for s, t in sorted(times.items())},
        "step_on": [bool(schedule[s]) for s in sorted(times)],
    }


HEADER = (f"{'model':<6} {'params':>8} {'steps on/off':>12} {'median none ms':>15} {'median all ms':>14} "
          f"{'median ovh %':>12} {'paired ovh %':>12} {'mean ovh %':>10} {'rank ms':>8} {'rank amort %':>12} "
          f"{'total %':>8} {'hooks ms':>9} {'est. %':>7}")


def format_row(r: dict[str, Any]) -> str:
    return (f"{r['model']:<6} {r['params_total'] / 1e6:>7.1f}M {r['n_on']:>5}/{r['n_off']:<6} "
            f"{r['median_step_ms_none']:>15.2f} {r['median_step_ms_all']:>14.2f} {r['median_overhead_pct']:>12.2f} "
            f"{r['paired_median_overhead_pct']:>12.2f} {r['mean_overhead_pct']:>10.2f} {r['rank_compute_ms']:>8.2f} "
            f"{r['rank_amortised_pct']:>12.3f} {r['amortised_total_pct']:>8.2f} {r['hook_ms_every_step']:>9.3f} "
            f"{r['estimated_amortised_pct']:>7.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,100m", help="comma list of: tiny, 100m")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps for the tiny model")
    parser.add_argument("--steps-100m", type=int, default=26, help="optimizer steps for the 100M model")
    parser.add_argument("--warmup", type=int, default=2, help="first steps dropped from the statistics")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "offline")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    payload = {
        "benchmark": "telemetry_cost",
        "target_overhead_pct": 3.0,
        "device": ("cuda:" + torch.cuda.get_device_name(0)) if torch.cuda.is_available()
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "callbacks": "default_callbacks() == conf/callbacks/default.yaml",
        "results": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        steps = args.steps if name == "tiny" else args.steps_100m
        print(f"[telemetry_cost] {name}: {steps} steps ...", file=sys.stderr, flush=True)
        payload["results"].append(bench_model(name, steps, args.warmup, args.batch_size, args.seq_len, args.seed))
        args.out.write_text(json.dumps(payload, indent=2))  # partial results survive an interruption
        print(format_row(payload["results"][-1]), file=sys.stderr, flush=True)
    print(HEADER)
    print("-" * len(HEADER))
    for r in payload["results"]:
        print(format_row(r))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
