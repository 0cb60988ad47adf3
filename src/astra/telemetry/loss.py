"""Learning rate and loss telemetry."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from astra.telemetry.base import BufferedMetricsCallback


class LRMonitor(BufferedMetricsCallback):
    """``train/lr`` (param group 0) and ``train/lr_pg{i}`` (other groups) at every optimizer step.

    Read in ``on_before_optimizer_step``, i.e. the rate the coming update uses, logged at that step's index.
    """

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        metrics: dict[str, float] = {}
        for index, group in enumerate(optimizer.param_groups):
            lr = group["lr"]
            metrics["train/lr" if index == 0 else f"train/lr_pg{index}"] = lr if isinstance(lr, Tensor) else float(lr)
        self._record(trainer, trainer.global_step, metrics)

    def summary(self) -> dict[str, Any]:
        return {"final_lr": self.latest["train/lr"]} if "train/lr" in self.latest else {}


class LossMonitor(BufferedMetricsCallback):
    """Optimizer-step training loss and validation-loss bookkeeping.

    Logs ``train/loss_step``: the mean loss over the micro-batches of each optimizer step
    (equal to the module's ``train/loss`` without gradient accumulation), at that step's index, every step,
    without a host sync per step. Reads the loss from the ``training_step`` output (a tensor or a mapping
    with ``"loss"``; Lightning's division by ``accumulate_grad_batches`` is undone). Keeps the validation loss the LightningModule logged under ``val_key`` after every
    validation (``trainer.callback_metrics``) for :meth:`summary`.
    """

    def __init__(self, final_window: int = 10, val_key: str = "val/loss", flush_every_n_steps: int = 25) -> None:
        super().__init__(flush_every_n_steps)
        self.final_window = max(1, int(final_window))
        self.val_key = val_key
        self._reset_state()

    def _reset_state(self) -> None:
        self._acc: Tensor | None = None
        self._count = 0
        self._last_global_step = 0
        self._recent: deque = deque(maxlen=self.final_window)
        self.val_history: list[tuple[int, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_state()
        self._last_global_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            # Lightning divides the returned loss by accumulate_grad_batches (also in `outputs`); undo it.
            loss = loss.detach().float() * trainer.accumulate_grad_batches
            self._acc = loss if self._acc is None else self._acc + loss
            self._count += 1
        if trainer.global_step != self._last_global_step:  # an optimizer step happened in this batch
            self._last_global_step = trainer.global_step
            if self._acc is not None:
                mean = self._acc / self._count
                self._recent.append(mean)
                self._record(trainer, trainer.global_step - 1, {"train/loss_step": mean})
            self._acc, self._count = None, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.val_key)
        if value is not None:
            self.val_history.append((trainer.global_step, float(value)))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "train/loss_step" in self.latest:
            out["final_train_loss"] = self.latest["train/loss_step"]
        if self._recent:
            out[f"final_train_loss_mean{self.final_window}"] = float(torch.stack(list(self._recent)).mean())
        if self.val_history:
            out["final_val_loss"] = self.val_history[-1][1]
            out["best_val_loss"] = min(v for _, v in self.val_history)
        return out
