"""Faults to inject into real runs from the config (tests only): a signal at a given step or phase."""

from __future__ import annotations

import os
import signal
import time

import lightning.pytorch as pl


class SignalAtStep(pl.Callback):
    """Send ``signal_name`` to this process right after optimizer step ``step`` (1-based) completes, unless the
    run was resumed (a preemption does not strike again at the same step)."""

    def __init__(self, step: int, signal_name: str = "SIGTERM"):
        self.step, self.signum = int(step), getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), self.signum)
            time.sleep(5)  # the handler raises during the sleep; never reached in a correct run


def signal_during_init(model, loader, context, signal_name: str = "SIGTERM", **_):
    """A method init (``method.init._target_``) that is interrupted while it runs."""
    os.kill(os.getpid(), getattr(signal, signal_name))
    time.sleep(5)
    return {}
