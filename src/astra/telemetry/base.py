"""Shared machinery: metrics recorded as device tensors, sent to the loggers in batches.

Per-step metrics (gradient norm, loss, tokens) stay on the accelerator until a flush, which moves all
pending values with one ``torch.cat(...).tolist()`` per device (one host sync per flush, not one per metric
or per step), then calls ``logger.log_metrics(metrics, step)`` once per step, in step order, for every
logger of the trainer. A flush happens every ``flush_every_n_steps`` records, at the end of training, on
an exception (so a crashed run keeps its last steps) and at teardown. Plain Python floats are accepted too.

Steps follow Lightning's convention for ``self.log`` in ``training_step``: the quantities of the optimizer
step with 0-based index ``i`` (gradient norm, learning rate, loss) are logged at step ``i``, which is
``trainer.global_step`` inside ``on_before_optimizer_step``. State measured after ``k`` completed optimizer
steps (effective rank, throughput) is logged at step ``k`` (``0`` = before training).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

log = logging.getLogger(__name__)

# The per-step series a result file keeps for the report's figures (astra.telemetry.summary.collect_series).
SERIES_KEYS = frozenset({"grad/norm", "train/lr", "rank/eff/mean", "rank/stable/mean", "val/loss"})

Number = int | float | Tensor


class BufferedMetricsCallback(pl.Callback):
    """Base class: ``_record`` / ``_record_vector`` metrics, flushed to ``trainer.loggers`` in batches.

    ``latest`` holds the last flushed value of every metric this callback produced.
    """

    def __init__(self, flush_every_n_steps: int = 25) -> None:
        super().__init__()
        self.flush_every_n_steps = max(1, int(flush_every_n_steps))
        # Each record: (step, [(names, value)]), value a float, a 0-d tensor (one name) or a 1-d tensor.
        self._pending: list[tuple[int, list[tuple[Sequence[str], Any]]]] = []
        self.latest: dict[str, float] = {}
        # Per-step values of the figures' series (SERIES_KEYS), so the result file can carry them: figures must never
        # depend on W&B.
        self.series: dict[str, list[tuple[int, float]]] = {}

    # ------------------------------------------------------------------ recording
    def _record(self, trainer: pl.Trainer, step: int, metrics: Mapping[str, Number]) -> None:
        if metrics:
            items = [((name,), value.detach() if isinstance(value, Tensor) else float(value)) for name, value in metrics.items()]
            self._append(trainer, step, items)

    def _record_vector(self, trainer: pl.Trainer, step: int, names: Sequence[str], vector: Tensor) -> None:
        if len(names) != vector.numel():
            raise ValueError(f"{len(names)} names for a vector of {vector.numel()} values")
        if names:
            self._append(trainer, step, [(tuple(names), vector.detach().reshape(-1))])

    def _append(self, trainer, step, items) -> None:
        self._pending.append((int(step), items))
        if len(self._pending) >= self.flush_every_n_steps:
            self.flush(trainer)

    # ------------------------------------------------------------------ flushing
    def flush(self, trainer: pl.Trainer) -> None:
        """Move every pending value to the host (one sync per device) and log it."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[Tensor]] = {}
        for _, items in pending:
            for _, value in items:
                if isinstance(value, Tensor):
                    by_device.setdefault(value.device, []).append(value.reshape(-1).float())
        host: dict[torch.device, list[float]] = {
            device: torch.cat(tensors).tolist() for device, tensors in by_device.items()
        }
        cursor = {device: 0 for device in host}
        per_step: dict[int, dict[str, float]] = {}
        for step, items in pending:
            metrics = per_step.setdefault(step, {})
            for names, value in items:
                if isinstance(value, Tensor):
                    start = cursor[value.device]
                    values = host[value.device][start : start + len(names)]
                    cursor[value.device] = start + len(names)
                else:
                    values = [value]
                metrics.update(zip(names, values))
        for step in sorted(per_step):
            self.latest.update(per_step[step])
            for name in SERIES_KEYS.intersection(per_step[step]):
                self.series.setdefault(name, []).append((step, per_step[step][name]))
            self._send(trainer, per_step[step], step)
        for logger in getattr(trainer, "loggers", []) or []:
            logger.save()

    @staticmethod
    def _send(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in getattr(trainer, "loggers", []) or []:
            logger.log_metrics(metrics, step=step)

    def _safe_flush(self, trainer: pl.Trainer) -> None:
        try:
            self.flush(trainer)
        except Exception:  # never mask the error that is being handled, never break teardown
            log.exception("%s: flushing metrics failed", type(self).__name__)

    # ------------------------------------------------------------------ hooks
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._safe_flush(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._safe_flush(trainer)

    def set_init_facts(self, init_report: Mapping[str, Any] | None = None, init_seconds: float | None = None) -> None:
        """What only run.py knows, for callbacks that use it (no-op otherwise): the init method's report
        (``_moment_eigenvalues`` -> ``rank/moment/...``) and the init wall time in seconds."""
        if init_report is not None and hasattr(self, "set_init_report"):
            self.set_init_report(init_report)
        if init_seconds is not None and hasattr(self, "set_init_time"):
            self.set_init_time(init_seconds)

    def summary(self) -> dict[str, Any]:
        """Figures for the run's result file (see :func:`astra.telemetry.summary.collect_summary`)."""
        return {}
