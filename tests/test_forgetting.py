"""Forgetting: generic-text loss before and after fine-tuning, against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from astra.models.build import load_tiny_tokenizer, tiny_llama
from astra.run import runner
from astra.training.forgetting import ForgettingProbe, mean_token_loss, token_windows


def test_windows_start_with_bos_and_are_full():
    tokenizer = load_tiny_tokenizer()
    windows = token_windows("The cat sat on the mat. " * 200, tokenizer, max_length=32, max_windows=5)
    assert windows.shape == (5, 32) and (windows[:, 0] == tokenizer.bos_token_id).all()
    with pytest.raises(ValueError, match="fewer than one window of 32"):
        token_windows("short", tokenizer, max_length=32, max_windows=5)


def test_mean_token_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    model = tiny_llama(seed=0)
    windows = torch.randint(4, 2000, (3, 17))
    expected = []
    for row in windows:  # one window at a time, log-softmax by hand
        logits = model(input_ids=row[None]).logits[0, :-1].double()
        expected.append(-logits.log_softmax(-1).gather(1, row[1:, None]).sum())
    direct = float(torch.stack(expected).sum() / (3 * 16))
    assert mean_token_loss(model, windows, batch_size=2, device=torch.device("cpu")) == pytest.approx(direct, rel=1e-5)
    assert model.training  # the mode is restored


def test_probe_reads_a_local_file(tmp_path):
    rows = [{"text": "Some generic sentence about the weather and the sea. " * 40}]
    path = tmp_path / "wiki.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = OmegaConf.create({"source": "file", "file": str(path), "max_length": 64, "max_windows": 4, "batch_size": 2})
    probe = ForgettingProbe(cfg, load_tiny_tokenizer(), torch.device("cpu"))
    assert probe.windows.shape == (4, 64) and probe.origin == f"file {path}"
    with pytest.raises(ValueError, match="forgetting.source='web' is not valid"):
        ForgettingProbe(OmegaConf.create({"source": "web"}), load_tiny_tokenizer(), torch.device("cpu"))


@pytest.mark.parametrize("method", ["astra", "full"])
def test_run_reports_the_increase(tmp_path, method):
    overrides = [f"method={method}", "logger=none", "callbacks=none", "trainer=debug", "trainer.eval_limit=2",
                 "task.eval.max_new_tokens=4", "optim.lr=1e-3"]  # fmt: skip
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    forgetting = result["forgetting"]
    assert forgetting["windows"] == 16 and forgetting["loss_before"] > 0 and forgetting["loss_after"] > 0
    assert forgetting["increase"] == pytest.approx(forgetting["loss_after"] - forgetting["loss_before"])
    assert result["metrics"]["forgetting"] == forgetting["increase"] and forgetting["increase"] != 0


def test_forgetting_can_be_switched_off(tmp_path):
    overrides = ["forgetting.enabled=false", "logger=none", "callbacks=none", "trainer=debug", "trainer.eval_limit=2",
                 "task.eval.max_new_tokens=4"]  # fmt: skip
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert "forgetting" not in result and "forgetting" not in result["metrics"]
