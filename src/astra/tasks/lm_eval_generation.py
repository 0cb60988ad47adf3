"""Greedy generation through lm-eval's ``generate_until`` (HFLM in process on the in-memory model, or vLLM).

The generation families (math, code) score the texts themselves (math-verify, sandboxed execution), so the
lm-eval task here only produces generations (metric ``bypass``): one JSONL of prompts, one request each.
BOS is prepended, as in training; decoding stops at EOS, at ``max_gen_toks`` new tokens or
at any of ``stop``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from astra.tasks.lm_eval_runner import hflm_session, write_items_jsonl

log = logging.getLogger(__name__)

TASK = "astra_generate"


def generate_with_lm_eval(model, tokenizer, prompts: list[str], work_dir: str | Path, max_gen_toks: int,
                          batch_size: int, stop: list[str] | None = None, backend: str = "hf",
                          vllm_args: dict | None = None) -> list[str]:  # fmt: skip
    """Greedy generations for ``prompts``; ``backend`` ``hf``: HFLM on the in-memory model, ``vllm``: lm-eval's
    vLLM model on an exported copy of it (``lm_eval_vllm``)."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # BOS as text: HFLM adds it only where the tokenizer's own post-processor does (not every tokenizer has one);
    # as a registered special token, the text encodes to the BOS id, as training's tokenisation does.
    bos = tokenizer.bos_token or ""
    rows = [{"id": i, "prompt": bos + p, "target": ""} for i, p in enumerate(prompts)]
    data_file = write_items_jsonl(rows, work_dir, TASK)
    config = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())},
                           "cache_dir": str((work_dir / "hf_datasets_cache").resolve())},  # fmt: skip
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "target",
        "target_delimiter": "",
        "generation_kwargs": {"until": list(stop or []), "do_sample": False, "max_gen_toks": int(max_gen_toks)},
        "metric_list": [{"metric": "bypass"}],
        "num_fewshot": 0,
    }
    if backend == "vllm":
        from astra.tasks.lm_eval_vllm import vllm_session

        session = vllm_session(model, tokenizer, work_dir, vllm_args)
    else:
        session = hflm_session(model, tokenizer, batch_size=batch_size, add_bos_token=False)
    with session as lm:
        results = evaluate(lm=lm, task_dict=TaskManager(include_defaults=False).load([config]), bootstrap_iters=0, log_samples=True)
    samples = sorted(results["samples"][TASK], key=lambda sample: sample["doc_id"])
    return [sample["resps"][0][0] for sample in samples]
