"""Forgetting: the model's loss on a fixed generic-text set before and after fine-tuning.

The increase (after - before, in nats per token) is the forgetting figure reported beside every causal-LM score.
An independent comparison found Astra comparable to LoRA in accuracy but with several times its forgetting, so
every run measures it. The text is cut into ``max_windows`` windows of ``max_length`` tokens (BOS first), the
same windows before and after, and the loss is the mean next-token cross-entropy over all their tokens.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SAMPLE_TEXT = Path(__file__).parent / "data" / "samples" / "generic_text" / "test.txt"


def read_text(cfg: Any) -> tuple[str, str]:
    """``(text, origin)`` from ``forgetting.source``: sample (shipped), file (``forgetting.file``: .txt, or .jsonl
    / .json rows with a ``text`` field) or hub (a dataset with a ``text`` column)."""
    source = cfg.source
    if source == "sample":
        return SAMPLE_TEXT.read_text(encoding="utf-8"), f"file {SAMPLE_TEXT}"
    if source == "file":
        if not cfg.get("file"):
            raise ValueError("forgetting.source=file needs forgetting.file=<a .txt, .jsonl or .json file>")
        path = Path(os.path.expanduser(str(cfg.file)))
        if path.suffix == ".txt":
            return path.read_text(encoding="utf-8"), f"file {path}"
        from astra.data.sources import read_rows

        return "\n\n".join(str(row["text"]) for row in read_rows(path)), f"file {path}"
    if source == "hub":
        from astra.models import _hub_reachable

        if not _hub_reachable():
            raise RuntimeError(f"forgetting.source=hub needs the Hub for {cfg.hub.path!r}; use forgetting.source=file "
                               "with forgetting.file=<local wikitext-2 test file> or forgetting.source=sample")  # fmt: skip
        import datasets

        rows = datasets.load_dataset(cfg.hub.path, cfg.hub.get("name"), split=cfg.hub.split)
        return "".join(rows["text"]), f"hub {cfg.hub.path} {cfg.hub.get('name')} {cfg.hub.split}"
    raise ValueError(f"forgetting.source={source!r} is not valid; expected sample, file or hub")


def token_windows(text: str, tokenizer, max_length: int, max_windows: int) -> torch.Tensor:
    """The first ``max_windows`` full windows of ``max_length`` tokens (BOS + ``max_length - 1`` text tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    body = max_length - 1
    count = min(max_windows, len(ids) // body)
    if count < 1:
        raise ValueError(f"the forgetting text has {len(ids)} tokens, fewer than one window of {max_length}; "
                         "lower forgetting.max_length or use a longer text")  # fmt: skip
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows = torch.tensor(ids[: count * body]).view(count, body)
    return torch.cat([torch.full((count, 1), bos), windows], dim=1)


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
