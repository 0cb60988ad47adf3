"""Batches for causal-LM training: BOS + prompt + answer + EOS, the loss on the answer only, right padding.

The default ``TaskFamily.tokenize`` / ``collate``; families with another head (GLUE) bring their own."""

from __future__ import annotations

import torch

from astra.data.examples import Example

IGNORE_INDEX = -100


def tokenize_example(example: Example, tokenizer, max_length: int) -> dict:
    """BOS + prompt + answer + EOS, truncated to ``max_length``; labels are -100 on the prompt."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + prompt_ids
    input_ids = (prompt_ids + answer_ids + [tokenizer.eos_token_id])[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id])[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def collate(features: list[dict], pad_token_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row (or to ``pad_to``); padding is masked and never a label."""
    length = pad_to or max(len(feature["input_ids"]) for feature in features)
    batch = {
        "input_ids": torch.full((len(features), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
        "labels": torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(feature["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(feature["labels"])
    return batch
