"""task.eval.backend=vllm without vLLM here: the trained model is exported exactly as it is in memory (residual
bases included), the wiring into lm-eval's VLLM model is exercised through a stand-in, and a missing vLLM or GPU
is refused before training with a message naming the setting."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from astra.models.build import build_model_and_tokenizer, load_tiny_tokenizer, tiny_llama
from astra.run import steps
from astra.tasks import lm_eval_vllm
from astra.tasks.base import get_family
from astra.tasks.generation import greedy_generate

FAST = ["trainer=debug", "logger=none", "trainer.eval_limit=4"]


@pytest.mark.parametrize("method", ["astra", "pissa", "lora_ga", "dora", "lora", "full"])
def test_export_reproduces_the_trained_model(tmp_path, method):
    cfg = compose_config(tmp_path, [f"method={method}", *FAST])
    model, tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed)
    datamodule = steps.build_datamodule(cfg, get_family(cfg.task.family), tokenizer)
    model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    with torch.no_grad():  # stands in for training: every trainable tensor moves
        generator = torch.Generator().manual_seed(1)
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    batch = next(iter(datamodule.calibration_dataloader(n_samples=4, batch_size=4)))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    export = lm_eval_vllm.export_trained_model(model, tokenizer, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
    assert not any("lora" in name for name, _ in reloaded.named_parameters()), "a plain checkpoint, adapters merged"
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5
    if method != "full":  # the in-memory model is untouched by the export (merged on a copy)
        assert any("lora_A" in name for name, _ in model.named_parameters())


def test_vllm_backend_generates_through_lm_eval_on_the_export(tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    seen = {}

    class StandInVLLM(HFLM):
        """lm-eval's VLLM reads a checkpoint folder: so does this stand-in, with HFLM doing the generation."""

        def __init__(self, pretrained, tokenizer, add_bos_token, **kwargs):
            seen.update(pretrained=pretrained, add_bos_token=add_bos_token, kwargs=kwargs,
                        files=sorted(p.name for p in __import__("pathlib").Path(pretrained).iterdir()))  # fmt: skip
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, add_bos_token=add_bos_token, batch_size=2,
                             device="cpu")

    fake = types.ModuleType("lm_eval.models.vllm_causallms")
    fake.VLLM = StandInVLLM
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", fake)
    monkeypatch.setattr(lm_eval_vllm, "vllm_installed", lambda: True)

    tokenizer, model = load_tiny_tokenizer(), tiny_llama(seed=0)
    model.train()
    prompts = ["Below is an instruction. ### Response:", "What is 2+2? The answer is:", "Hello there"]
    cpu = torch.device("cpu")
    work_dir = tmp_path / "lm_eval"
    through_vllm = greedy_generate(model, tokenizer, prompts, 12, 2, cpu, backend="vllm", work_dir=work_dir,
                                   vllm_args={"gpu_memory_utilization": 0.5})  # fmt: skip
    assert through_vllm == greedy_generate(model, tokenizer, prompts, 12, 2, cpu, backend="loop")
    assert seen["add_bos_token"] is False and seen["kwargs"] == {"gpu_memory_utilization": 0.5}
    assert "config.json" in seen["files"] and "model.safetensors" in seen["files"]
    assert not (work_dir / "vllm_model").exists(), "the exported copy is deleted after generation"
    assert model.training and next(model.parameters()).device == cpu


@pytest.mark.parametrize("task", ["gsm8k", "humaneval", "arc_e"])
def test_vllm_refused_before_training_when_missing(task, monkeypatch):
    task_cfg = OmegaConf.load(f"conf/task/{task}.yaml")
    task_cfg.eval.backend = "vllm"
    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    task_cfg.eval.allow_code_execution = True if task == "humaneval" else task_cfg.eval.get("allow_code_execution")
    if lm_eval_vllm.vllm_installed():
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError, match=r"task.eval.backend=vllm needs vLLM.*task.eval.backend=hf"):
        get_family(task_cfg.family).check_ready(task_cfg)
    monkeypatch.setattr(lm_eval_vllm, "vllm_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        get_family(task_cfg.family).check_ready(task_cfg)
    task_cfg.eval.backend = "tpu"
    with pytest.raises(ValueError, match=r"task.eval.backend='tpu' is not valid; expected one of \['hf', 'loop', 'vllm'\]"):
        get_family(task_cfg.family).check_ready(task_cfg)
