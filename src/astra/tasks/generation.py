"""Greedy generation for the generation families (math, code, commonsense's generation protocol).

``task.eval.backend``: ``hf`` (default) runs lm-eval's ``generate_until`` with its HFLM model on the in-memory
model (``lm_eval_generation``); ``loop`` is the framework's own batched loop below (same tokens: BOS first,
left padding; kept as the reference the benchmark and tests compare with); ``vllm`` is lm-eval's vLLM model on
an exported, merged copy of the trained model (``lm_eval_vllm``: a GPU-only optional extra, never in the main
environment, since it pins an older transformers)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

BACKENDS = ("hf", "loop", "vllm")


def generation_options(task_cfg, settings) -> dict:
    """The backend and work folder a family's evaluation passes to :func:`greedy_generate`."""
    work_dir = settings.records_path.parent / "lm_eval" if settings.records_path is not None else None
    vllm_args = task_cfg.eval.get("vllm_args")
    options = {"backend": str(task_cfg.eval.get("backend", "hf")), "work_dir": work_dir}
    return {**options, "vllm_args": dict(vllm_args)} if vllm_args else options


def check_backend(task_cfg) -> None:
    """Before training: the backend is known and, for vllm, installed with a GPU to run on."""
    backend = str(task_cfg.eval.get("backend", "hf"))
    if backend not in BACKENDS:
        raise ValueError(f"task.eval.backend={backend!r} is not valid; expected one of {list(BACKENDS)}")
    if backend == "vllm":
        from astra.tasks.lm_eval_vllm import check_vllm_ready

        check_vllm_ready()


def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: torch.device,
                    backend: str = "hf", work_dir: Path | None = None, vllm_args: dict | None = None) -> list[str]:  # fmt: skip
    if backend in ("hf", "vllm"):
        from astra.tasks.lm_eval_generation import generate_with_lm_eval

        if backend == "vllm":
            from astra.tasks.lm_eval_vllm import INSTALL_HINT, vllm_installed

            if not vllm_installed():
                raise ImportError(INSTALL_HINT)
        work_dir = work_dir or Path(tempfile.mkdtemp(prefix="astra-generate-"))
        return generate_with_lm_eval(model, tokenizer, prompts, work_dir, max_new_tokens, batch_size,
                                     backend=backend, vllm_args=vllm_args)  # fmt: skip
    if backend == "loop":
        return generate_loop(model, tokenizer, prompts, max_new_tokens, batch_size, device)
    raise ValueError(f"task.eval.backend={backend!r} is not valid; expected one of {list(BACKENDS)}")


@torch.no_grad()
def generate_loop(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: torch.device) -> list[str]:
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
