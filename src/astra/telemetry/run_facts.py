"""Run facts: parameter counts, init time, tokens per second, peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from astra.telemetry.base import BufferedMetricsCallback


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared parameters counted once)."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def peak_memory_mb(device: torch.device | None = None) -> tuple[float, str]:
    """``(MiB, source)``: CUDA max allocated on ``device`` when it is a CUDA device, else the process's
    max resident set size (``resource.getrusage``; KiB on Linux, bytes on macOS)."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return rss * scale / 2**20, "max_rss"


def count_tokens(batch: Any, mask_key: str = "attention_mask") -> Tensor | None:
    """Non-padding tokens in a batch: ``batch[mask_key].sum()`` (on the batch's device, no sync);
    ``input_ids.numel()`` when there is no mask; None when neither is found."""
    if isinstance(batch, Mapping):
        mask = batch.get(mask_key)
        if isinstance(mask, Tensor):
            return mask.detach().sum()
        ids = batch.get("input_ids")
        if isinstance(ids, Tensor):
            return torch.tensor(ids.numel(), device=ids.device)
    return None


class RunFactsMonitor(BufferedMetricsCallback):
    """Parameter counts, init time, throughput and peak memory.

    At the start of training (step 0): ``run/params_trainable``, ``run/params_total``,
    ``run/params_trainable_pct`` and ``run/init_time_s`` (when given, by ``set_init_time`` or the
    constructor). Every ``every_n_steps`` optimizer steps and at the end: ``run/tokens_per_s`` over the
    window (non-padding tokens from ``batch["attention_mask"]`` of every micro-batch, summed over devices,
    divided by the wall time of the window without validation), ``run/peak_memory_mb``,
    ``run/tokens_total`` and ``run/train_time_s``. On CUDA the window end synchronises once so the timing
    covers the queued work.

    Summary: ``tokens_per_s`` (whole run), ``peak_memory_mb``, ``peak_memory_source``, ``train_time_s``,
    ``tokens_total``, ``trainable_params``, ``total_params``, ``init_time_s``.
    """

    def __init__(
        self,
        every_n_steps: int = 25,
        mask_key: str = "attention_mask",
        init_time_s: float | None = None,
        flush_every_n_steps: int = 25,
    ) -> None:
        super().__init__(flush_every_n_steps)
        self.every_n_steps = max(1, int(every_n_steps))
        self.mask_key = mask_key
        self.init_time_s = init_time_s
        self.params: tuple[int, int] = (0, 0)
        self._reset_clock()

    def set_init_time(self, seconds: float | None) -> None:
        self.init_time_s = None if seconds is None else float(seconds)

    def _reset_clock(self) -> None:
        self._window_tokens: Tensor | None = None
        self._total_tokens = 0.0
        self._train_start: float | None = None
        self._window_start = 0.0
        self._val_time_window = 0.0
        self._val_time_total = 0.0
        self._val_started: float | None = None
        self._last_global_step = 0
        self._last_logged_step: int | None = None
        self.final: dict[str, Any] = {}

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_clock()
        self.params = parameter_counts(pl_module)
        trainable, total = self.params
        metrics = {
            "run/params_trainable": float(trainable),
            "run/params_total": float(total),
            "run/params_trainable_pct": 100.0 * trainable / total if total else 0.0,
        }
        if self.init_time_s is not None:
            metrics["run/init_time_s"] = self.init_time_s
        self._record(trainer, trainer.global_step, metrics)
        self._last_global_step = trainer.global_step
        self._sync(pl_module)
        self._train_start = self._window_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        tokens = count_tokens(batch, self.mask_key)
        if tokens is not None:
            self._window_tokens = tokens if self._window_tokens is None else self._window_tokens + tokens

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_global_step:
            self._last_global_step = step
            if step % self.every_n_steps == 0:
                self._close_window(trainer, pl_module, step)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_start is not None and not trainer.sanity_checking:
            self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_started is not None:
            spent = time.perf_counter() - self._val_started
            self._val_time_window += spent
            self._val_time_total += spent
            self._val_started = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_start is not None and self._last_logged_step != trainer.global_step:
            self._close_window(trainer, pl_module, trainer.global_step)
        super().on_train_end(trainer, pl_module)

    # ------------------------------------------------------------------ measurement
    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _close_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        elapsed = max(now - self._window_start - self._val_time_window, 1e-9)
        tokens = self._window_tokens
        if tokens is None:
            tokens = torch.zeros((), device=pl_module.device)
        # A collective when distributed: every rank reaches here at the same steps.
        tokens = trainer.strategy.reduce(tokens.double(), reduce_op="sum")
        window_tokens = float(tokens)
        self._total_tokens += window_tokens
        train_time = max(now - self._train_start - self._val_time_total, 1e-9)
        peak, source = peak_memory_mb(pl_module.device)
        metrics = {
            "run/tokens_per_s": window_tokens / elapsed,
            "run/tokens_total": self._total_tokens,
            "run/train_time_s": train_time,
            "run/peak_memory_mb": peak,
        }
        self._record(trainer, step, metrics)
        self.final = {
            "tokens_per_s": self._total_tokens / train_time,
            "tokens_total": self._total_tokens,
            "train_time_s": train_time,
            "peak_memory_mb": peak,
            "peak_memory_source": source,
        }
        self._last_logged_step = step
        self._window_tokens = None
        self._window_start = time.perf_counter()
        self._val_time_window = 0.0

    def summary(self) -> dict[str, Any]:
        trainable, total = self.params
        out: dict[str, Any] = {"trainable_params": trainable, "total_params": total}
        if self.init_time_s is not None:
            out["init_time_s"] = self.init_time_s
        out.update(self.final)
        return out
