"""Forgetting: the model's loss on a fixed generic-text set before and after fine-tuning.

The increase (after - before, in nats per token) is the forgetting figure reported beside every causal-LM score.
An independent comparison found Astra comparable to LoRA in accuracy but with several times its forgetting, so
every run measures it. The text is cut into ``max_windows`` windows of ``max_length`` tokens (BOS first), the
same windows before and after, and the loss is the mean next-token cross-entropy over all their tokens.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from astra.data.generic_text import read_text, token_windows

log = logging.getLogger(__name__)

@torch.no_grad()
def mean_token_loss(model, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total, tokens = total + float(nll), tokens + batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / tokens


class ForgettingProbe:
    """Measure once before training (:meth:`before`) and once after (:meth:`after`); :meth:`report` for the result."""

    def __init__(self, cfg: Any, tokenizer, device: torch.device):
        self.cfg, self.device = cfg, device
        text, self.origin = read_text(cfg)
        self.windows = token_windows(text, tokenizer, int(cfg.max_length), int(cfg.max_windows))
        self.loss_before: float | None = None
        self.loss_after: float | None = None

    def before(self, model) -> None:
        self.loss_before = mean_token_loss(model, self.windows, int(self.cfg.batch_size), self.device)

    def after(self, model) -> None:
        self.loss_after = mean_token_loss(model, self.windows, int(self.cfg.batch_size), self.device)

    def report(self) -> dict[str, Any]:
        increase = None
        if self.loss_before is not None and self.loss_after is not None:
            increase = self.loss_after - self.loss_before
        return {"text": self.origin, "windows": int(self.windows.shape[0]), "tokens_per_window": int(self.windows.shape[1]),
                "loss_before": self.loss_before, "loss_after": self.loss_after, "increase": increase,
                "perplexity_before": math.exp(self.loss_before) if self.loss_before is not None else None}  # fmt: skip
