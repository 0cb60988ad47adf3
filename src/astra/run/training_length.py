"""How long a run trains. ``trainer.lightning.max_epochs`` sets it, except that a model may name the fewest optimizer
steps a fine-tune of it needs to leave chance (``model.min_train_steps``): on a small training set the epochs are
raised to reach that many steps, and the run logs and records the change. ``trainer.lightning.max_steps`` given
(>= 0) fixes the length exactly; ``model.min_train_steps=null`` trains exactly ``max_epochs``.

Why: MiniLM on 570 real QNLI rows at the trainer's 2 epochs of 8 takes 144 steps and every method stays near
chance (LoRA 0.530, Astra 0.515 on 200 held-out pairs); docs/methods.md#training-length has the measurements.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from astra.run.validation import ConfigError, planned_optimizer_steps


def step_floor(cfg: DictConfig) -> int | None:
    floor = cfg.model.get("min_train_steps")
    if floor is None:
        return None
    if not isinstance(floor, int) or isinstance(floor, bool) or floor < 1:
        raise ConfigError(f"model.min_train_steps={floor!r} is not valid: expected a positive integer or null "
                          "(null: train exactly trainer.lightning.max_epochs)")
    return floor


def training_length(cfg: DictConfig, train_rows: int) -> dict[str, Any]:
    """The epochs the trainer runs and why: ``{"max_epochs", "optimizer_steps", "raised_from", "reason"}``.
    ``raised_from`` is None unless ``model.min_train_steps`` raised ``max_epochs``."""
    lightning = cfg.trainer.lightning
    planned = planned_optimizer_steps(cfg, train_rows)
    length = {"max_epochs": lightning.get("max_epochs"), "optimizer_steps": planned, "raised_from": None,
              "reason": None}
    floor = step_floor(cfg)
    fixed_steps = int(lightning.get("max_steps", -1)) >= 0
    epochs_given = lightning.get("max_epochs") is not None and int(lightning.max_epochs) >= 1
    if floor is None or fixed_steps or not epochs_given or not cfg.method.get("trains", True) or planned >= floor:
        return length
    per_epoch = planned // int(lightning.max_epochs)
    if per_epoch < 1:
        return length  # zero steps: check_trains names that
    epochs = math.ceil(floor / per_epoch)
    length.update(max_epochs=epochs, optimizer_steps=per_epoch * epochs, raised_from=int(lightning.max_epochs),
                  reason=f"{train_rows} rows give {per_epoch} optimizer steps an epoch and model.min_train_steps="
                         f"{floor}; model.min_train_steps=null trains exactly trainer.lightning.max_epochs")
    return length
