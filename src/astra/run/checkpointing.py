"""Periodic checkpoints of what a run needs to continue, and ``python run.py resume=<run_dir>``.

A checkpoint (``<run_dir>/checkpoint/last.ckpt``, a Lightning checkpoint) holds the trainable parameters only
(never the frozen base model: see ``CausalLMModule.on_save_checkpoint``), the optimizer, the LR scheduler,
the loop progress, the data position (the data module's ``state_dict``) and the RNG states. Resuming
recomposes the run's own config from ``<run_dir>/.hydra/overrides.yaml``, re-applies the same init (from the
calibration cache, or recomputed: it is deterministic), restores the checkpoint and finishes the run in the
same directory, updating its result file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning.pytorch as pl
import yaml

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "last.ckpt"


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


class PeriodicCheckpoint(pl.Callback):
    """Save ``last.ckpt`` after every ``every_n_steps``-th optimizer step, replacing the previous one atomically
    (a kill during the write leaves the previous checkpoint intact)."""

    def __init__(self, run_dir: str | Path, every_n_steps: int):
        if int(every_n_steps) < 1:
            raise ValueError(f"trainer.checkpoint_every_n_steps={every_n_steps} must be a positive integer or null")
        self.path, self.every_n_steps = checkpoint_path(run_dir), int(every_n_steps)
        self._last_saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or trainer.is_last_batch
        if not stepped or step == 0 or step % self.every_n_steps or step == self._last_saved_step:
            return
        self._last_saved_step = step
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(temporary)  # every rank calls it; the strategy writes on rank 0 only
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
            log.info("checkpoint at step %d: %s", step, self.path)


def resume_argv(argv: list[str]) -> list[str]:
    """Expand ``resume=<run_dir>`` on the command line into that run's own overrides, run in its directory.

    Other overrides next to ``resume=`` are refused: a resumed run must be the same run."""
    requests = [arg for arg in argv[1:] if arg.startswith("resume=")]
    if not requests:
        return argv
    others = [arg for arg in argv[1:] if not arg.startswith("resume=")]
    if len(requests) > 1 or others:
        raise SystemExit(
            f"resume= takes one run directory and no other arguments (got {argv[1:]}); the run continues with "
            "its own config from <run_dir>/.hydra/overrides.yaml"
        )
    run_dir = Path(requests[0].split("=", 1)[1]).expanduser().resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        raise SystemExit(f"resume={run_dir}: {overrides_file} does not exist; pass a run directory written by run.py")
    if not checkpoint_path(run_dir).is_file():
        raise SystemExit(
            f"resume={run_dir}: no checkpoint at {checkpoint_path(run_dir)}; the run had no checkpoint yet (set "
            "trainer.checkpoint_every_n_steps=N to write one every N optimizer steps)"
        )
    overrides = yaml.safe_load(overrides_file.read_text()) or []
    own = [item for item in overrides if not item.startswith(("resume=", "hydra."))]
    quoted = "'" + str(run_dir).replace("'", "\\'") + "'"  # a path may hold characters Hydra's grammar parses
    return [argv[0], *own, f"resume={quoted}", f"hydra.run.dir={quoted}", "hydra.output_subdir=.hydra_resume"]
