"""The LightningModule. It holds nothing method-specific: every method arrives as an initialised model."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


def cosine_with_warmup(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over ceil(warmup_ratio * total) steps, then cosine to zero."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class CausalLMModule(pl.LightningModule):
    """Next-token loss on prompt-masked labels; AdamW over trainable parameters; cosine schedule."""

    def __init__(self, model: nn.Module, optim: Any):
        super().__init__()
        self.model = model
        self.optim = optim
        # Detached per-step losses, read once after fitting (no host sync inside the step).
        self.step_losses: list[torch.Tensor] = []

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.step_losses.append(loss.detach())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        if not parameters:
            raise RuntimeError("the model has no trainable parameters; check method.peft.target_modules")
        optimizer = torch.optim.AdamW(
            parameters,
            lr=self.optim.lr,
            weight_decay=self.optim.weight_decay,
            betas=tuple(self.optim.betas),
            eps=self.optim.eps,
        )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, self.optim.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def loss_history(self) -> list[float]:
        """Per-micro-batch training losses as floats (one host transfer)."""
        if not self.step_losses:
            return []
        return torch.stack(self.step_losses).float().cpu().tolist()
