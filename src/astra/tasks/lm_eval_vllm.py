"""``task.eval.backend=vllm``: greedy generation through lm-eval's vLLM model (a GPU-only optional extra).

vLLM loads weights from a checkpoint folder, not from a Python object, so the model *as trained* is written out
first: a PEFT model is copied and merged (``merge_and_unload``: base weights, which residual methods such as Astra,
PiSSA and LoRA-GA have already changed at init, plus the trained adapter), never rebuilt as the original base
plus the adapter. While vLLM holds the GPU the trained model waits on the CPU; it comes back to its device and
its train/eval mode afterwards, and the exported folder is deleted.

vLLM is kept out of the main environment (it pins an older transformers than this project's); install it in a
separate environment with this package (``pip install vllm`` next to ``pip install -e .``). Extra arguments for
lm-eval's ``VLLM`` (``gpu_memory_utilization``, ``tensor_parallel_size``, ``max_model_len``, ...) go in
``task.eval.vllm_args``: ``python run.py ... task.eval.backend=vllm +task.eval.vllm_args.gpu_memory_utilization=0.6``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.util
import shutil
from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = (
    "task.eval.backend=vllm needs vLLM, an optional GPU-only extra kept out of the main environment (it pins an "
    "older transformers): install it in a separate environment (pip install vllm, then pip install -e .), or use "
    "task.eval.backend=hf"
)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_ready() -> None:
    """Before training: refuse a vLLM evaluation that could not run (no vLLM, or no CUDA GPU)."""
    if not vllm_installed():
        raise ImportError(INSTALL_HINT)
    if not torch.cuda.is_available():
        raise RuntimeError("task.eval.backend=vllm needs a CUDA GPU and none is visible; use task.eval.backend=hf")


def export_trained_model(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """The in-memory model as a plain Hugging Face checkpoint (adapters merged on a copy) in ``out_dir``."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del plain
    return out_dir


@contextlib.contextmanager
def parked_on_cpu(model: torch.nn.Module):
    """The model on the CPU for the duration (vLLM wants the GPU memory), then back where it was."""
    device = next(model.parameters()).device
    model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        yield
    finally:
        model.to(device)


def vllm_session(model: Any, tokenizer: Any, work_dir: Path, vllm_args: dict | None = None):
    """A context manager giving lm-eval's ``VLLM`` on an exported copy of ``model``."""

    @contextlib.contextmanager
    def session():
        from lm_eval.models.vllm_causallms import VLLM

        export_dir = work_dir / "vllm_model"
        was_training = model.training
        model.eval()
        lm = None
        try:
            with parked_on_cpu(model):
                export_trained_model(model, tokenizer, export_dir)
                # BOS comes as text in the prompt (as training tokenises); vLLM must not add a second one.
                lm = VLLM(pretrained=str(export_dir), tokenizer=str(export_dir), add_bos_token=False,
                          **dict(vllm_args or {}))  # fmt: skip
                yield lm
        finally:
            del lm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            shutil.rmtree(export_dir, ignore_errors=True)
            model.train(was_training)

    return session()
