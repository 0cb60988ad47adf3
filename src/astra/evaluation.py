"""Greedy generation on the test split and the task's metric."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from astra.data.formats import Example, extract_final_number


def exact_match_final_number(generations: list[str], examples: list[Example]) -> dict[str, float]:
    correct = [extract_final_number(text) == example.reference for text, example in zip(generations, examples)]
    return {"accuracy": sum(correct) / max(1, len(correct)), "n_eval": float(len(correct))}


METRICS = {"exact_match_final_number": exact_match_final_number}


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: torch.device) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches; BOS added as in training)."""
    was_training = model.training
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", leave=False):
            encoded = [bos + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
            width = max(map(len, encoded))
            input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(encoded):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outputs.extend(tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True))
    finally:
        model.train(was_training)
    return outputs


def evaluate_generation(model, tokenizer, examples: list[Example], eval_cfg: Any, limit: int | None, device) -> dict:
    """Generate for the test examples and score them; returns metrics plus a few samples for inspection."""
    if eval_cfg.metric not in METRICS:
        raise ValueError(f"task.eval.metric={eval_cfg.metric!r} is unknown; valid metrics: {sorted(METRICS)}")
    examples = examples[:limit] if limit else examples
    generations = generate(model, tokenizer, [e.prompt for e in examples], eval_cfg.max_new_tokens, eval_cfg.batch_size, device)
    metrics = METRICS[eval_cfg.metric](generations, examples)
    samples = [{"prompt": e.prompt[-200:], "generation": g[:400], "reference": e.reference} for e, g in zip(examples[:3], generations)]
    return {"metrics": metrics, "samples": samples}
