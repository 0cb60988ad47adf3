"""The method interface shared by every initialisation.

A method is one YAML in ``conf/method/`` plus (for data-driven or residual inits) one module here.
The YAML holds:

- ``name``: the method's name, used in result files.
- ``peft``: keyword arguments for ``peft.LoraConfig`` (``null`` for full fine-tuning).
- ``calibration``: ``null`` when the method needs no data, else ``{n_samples, batch_size, ...}``;
  ``run.py`` then builds a calibration loader of exactly ``n_samples`` training rows.
- ``init``: a Hydra ``_target_`` with ``_partial_: true`` naming an :data:`InitFn` plus its options.

``run.py`` wraps the model with PEFT (``init_lora_weights`` as the YAML says), then calls
``init(model, calibration_loader, context)``. The callable changes the adapter, and for residual methods
the frozen base weight, in place, and returns a small JSON-friendly report (plus optional tensors under
keys starting with ``_``, which are not written to the result file).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astra.models.adapters import ADAPTER


@dataclass
class InitContext:
    """What an init callable may need besides the model and the calibration data."""

    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Directory for cached calibration statistics; None disables caching.
    cache_dir: Path | None = None
    # Identity of the calibration data: a hash of the calibration batches and a fingerprint of the model
    # (astra.calibration.identity), plus labels for readers.
    # Engines add their own statistics options before hashing it.
    cache_key: dict[str, Any] = field(default_factory=dict)
    adapter_name: str = ADAPTER
    # Whether the telemetry wants each layer's moment spectrum (the effective_rank callback logs its effective
    # rank); an init that would compute it only for that (Astra's randomized eigensolver) skips it otherwise.
    moment_spectrum: bool = False


InitFn = Callable[[nn.Module, torch.utils.data.DataLoader | None, InitContext], dict]


def keep_peft_init(model: nn.Module, calibration_loader, context: InitContext) -> dict:
    """Init callable for methods whose whole init is done by PEFT (LoRA, DoRA, PiSSA)."""
    return {}


def frozen_init(model: nn.Module, calibration_loader, context: InitContext) -> dict:
    """method=untrained: nothing trains (0 trainable parameters); the model is scored as loaded."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return {}


def full_finetune_init(model: nn.Module, calibration_loader, context: InitContext) -> dict:
    """Full fine-tuning: every parameter trains, no adapter."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return {}
