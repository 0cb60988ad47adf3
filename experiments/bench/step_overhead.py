"""Training-step overhead of the framework's Lightning step against a bare PyTorch loop.

    python experiments/bench/step_overhead.py                      # tiny and ~100M models, CPU or GPU
    python experiments/bench/step_overhead.py --shapes tiny --steps 20

Both loops run the same forward/backward/AdamW/cosine-schedule/clip step on the same PEFT LoRA model
(r=8 on q,k,v,o,gate,up,down) and the same batch, interleaved in rounds in one process so machine noise
hits both alike. A step is timed from one batch start to the next, so the framework's hooks, logging and
data handling all count. Target: ratio (Lightning / bare) at most 1.05 at the ~100M size.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    SHAPES,
    TARGETS,
    build_model,
    environment,
    median,
    print_table,
    synchronize,
    synthetic_batch,
    write_json,
)

from astra.pipeline import choose_precision  # noqa: E402
from astra.training import CausalLMModule, cosine_with_warmup  # noqa: E402

OPTIM = OmegaConf.create({"lr": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.03, "betas": [0.9, 0.999], "eps": 1e-8})


class StepTimer(pl.Callback):
    def __init__(self, device):
        self.device, self.stamps = device, []

    def on_train_batch_start(self, *args):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def lightning_steps(model, batch, steps, device, precision) -> list[float]:
    timer = StepTimer(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision, max_steps=steps,
        gradient_clip_val=1.0, logger=False, callbacks=[timer], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    loader = DataLoader([batch] * steps, batch_size=None)
    trainer.fit(CausalLMModule(model, OPTIM), train_dataloaders=loader)
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]


def bare_steps(model, batch, steps, device, precision) -> list[float]:
    model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=OPTIM.lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(steps, OPTIM.warmup_ratio))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    stamps = []
    for _ in range(steps):
        synchronize(device)
        stamps.append(time.perf_counter())
        on_device = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast:
            loss = model(**on_device).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # a real loop logs the loss, as the Lightning step does
    synchronize(device)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def measure(shape: str, steps: int, rounds: int, batch_size: int, seq_len: int, device: torch.device) -> dict:
    precision = choose_precision(OmegaConf.create({"lightning": {"precision": "auto"}}), device)
    base = build_model(shape)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    batch = synthetic_batch(SHAPES[shape]["vocab_size"], batch_size, seq_len)
    times = {"lightning": [], "bare": []}
    warmup = 2
    for _ in range(rounds):
        for name, fn in (("lightning", lightning_steps), ("bare", bare_steps)):
            model = copy.deepcopy(peft_model)  # identical starting weights for both loops
            times[name] += fn(model, batch, steps + warmup, device, precision)[warmup:]
            del model
    n_params = sum(p.numel() for p in base.parameters())
    row = {
        "model": shape,
        "params_M": round(n_params / 1e6, 1),
        "batch": f"{batch_size}x{seq_len}",
        "precision": precision,
        "lightning_ms": 1000 * median(times["lightning"]),
        "bare_ms": 1000 * median(times["bare"]),
        "steps_each": len(times["bare"]),
    }
    row["ratio"] = row["lightning_ms"] / row["bare_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "llama100m"], choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "step_overhead.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure(shape, args.steps, args.rounds, args.batch_size, args.seq_len, device) for shape in args.shapes]
    print_table(rows, ["model", "params_M", "batch", "precision", "lightning_ms", "bare_ms", "ratio", "steps_each"])
    out = write_json({"benchmark": "step_overhead", "target": "ratio <= 1.05 at llama100m", "environment": environment(device), "args": vars(args) | {"out": str(args.out)}, "rows": rows}, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
