"""The 7B rehearsal's pieces at tiny scale: model=llama2_7b_shape carries LLaMA-2-7B's widths, a built vocabulary
can be wider than the tokenizer (never narrower), and the rehearsal's merged-export check (adapter on a rebuilt
base, merged as the vLLM backend writes it, reloaded) gives the adapter model's logits."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT, compose_config

from astra.models.build import build_model, build_tokenizer, vocabulary_size
from astra.run import runner


def rehearsal_module():
    spec = importlib.util.spec_from_file_location("rehearse_7b", ROOT / "experiments" / "bench" / "rehearse_7b.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shape_config_has_llama2_7b_widths(tmp_path):
    cfg = compose_config(tmp_path, ["model=llama2_7b_shape"])
    shape = cfg.model.architecture
    assert (shape.hidden_size, shape.intermediate_size, shape.num_attention_heads, shape.vocab_size) == (
        4096, 11008, 32, 32000)
    assert cfg.model.dtype == "bfloat16" and list(cfg.model.target_modules) == list(
        compose_config(tmp_path, ["model=llama2_7b"]).model.target_modules)


def test_a_vocabulary_narrower_than_the_tokenizer_is_refused(tmp_path):
    tokenizer = build_tokenizer(compose_config(tmp_path, ["model=tiny_llama"]).model)
    assert vocabulary_size(None, tokenizer) == len(tokenizer) and vocabulary_size(32000, tokenizer) == 32000
    with pytest.raises(ValueError, match=r"model.architecture.vocab_size=100 is not valid: expected an integer >="):
        vocabulary_size(100, tokenizer)


@pytest.mark.parametrize("method", ["astra", "pissa"])
def test_the_rehearsal_pipeline_and_merged_export_at_tiny_width(tmp_path, method):
    """A run of the rehearsal's settings on the shape config shrunk to width 64 (float32, so the merged copy's
    logits match to rounding), then the rehearsal's merged-export check on its adapter."""
    tiny = ["model.architecture.hidden_size=64", "model.architecture.intermediate_size=172",
            "model.architecture.num_attention_heads=4", "model.architecture.num_key_value_heads=4",
            "model.architecture.vocab_size=4096", "model.dtype=float32"]  # fmt: skip
    module = rehearsal_module()
    args = type("Args", (), dict(calibration_rows=4, max_length=256, train_steps=2, eval_items=2, new_tokens=2))
    overrides = [*module.overrides_for(args, method, 2), *tiny, "rank=8", "alpha=8"]
    cfg = compose_config(tmp_path, overrides)
    runner.train(cfg, overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["train_loss"]["steps"] == 2
    assert build_model(cfg.model, cfg.seed, build_tokenizer(cfg.model)).get_input_embeddings().num_embeddings == 4096
    export = module.merged_export_check(cfg, tmp_path / "run")
    assert export["same_argmax"] and export["max_abs_logit_difference"] < 1e-4 * max(1.0, export["max_abs_logit"])
