"""Generic text (``forgetting.source``: the shipped prose, a file or wikitext-2) cut into token windows: what the
forgetting probe scores before and after training, and what ``calibration_source=generic_text`` calibrates on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from astra.data.sources import read_rows
from astra.models.sources import hub_reachable

SAMPLE_TEXT = Path(__file__).resolve().parent / "samples" / "generic_text" / "test.txt"


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
        return "\n\n".join(str(row["text"]) for row in read_rows(path)), f"file {path}"
    if source == "hub":
        if not hub_reachable():
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
