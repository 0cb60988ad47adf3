"""model.min_train_steps: on a small training set the epochs are raised until training takes that many optimizer
steps; max_steps, a null floor or an untrained method leave the length alone; the change is logged, recorded and
shown in the summary, and a null floor does not change a run's identity."""

from __future__ import annotations

import json
import re

import pytest
from conftest import compose_config

from astra.run import runner, skip_existing
from astra.run.training_length import training_length
from astra.run.validation import ConfigError

TINY = ["model=tiny_bert", "task=qnli", "method=lora", "logger=none", "callbacks=none", "trainer.batch_size=4"]


def length_for(tmp_path, rows: int, *overrides: str) -> dict:
    return training_length(compose_config(tmp_path, [*TINY, *overrides]), rows)


def test_the_floor_raises_epochs_to_reach_it(tmp_path):
    # MiniLM's case: 570 rows at 8 a batch are 72 steps an epoch; 2 epochs (144) are raised to 6 (432) for 400.
    length = length_for(tmp_path, 570, "trainer.batch_size=8", "trainer.lightning.max_epochs=2",
                        "model.min_train_steps=400")
    assert (length["max_epochs"], length["optimizer_steps"], length["raised_from"]) == (6, 432, 2)
    assert "72 optimizer steps an epoch" in length["reason"] and "min_train_steps=null" in length["reason"]


@pytest.mark.parametrize("override", ["model.min_train_steps=null", "trainer.lightning.max_steps=10",
                                      "method=untrained", "model.min_train_steps=20"])
def test_the_floor_leaves_the_length_alone(tmp_path, override):
    """A null floor, an explicit max_steps, a method that does not train, or a training set already long enough."""
    length = length_for(tmp_path, 40, "trainer.lightning.max_epochs=2", "model.min_train_steps=100", override)
    assert length["raised_from"] is None and length["max_epochs"] == 2


def test_a_bad_floor_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model.min_train_steps=0 is not valid: expected a positive integer or null"):
        length_for(tmp_path, 40, "model.min_train_steps=0")


def test_a_null_floor_is_not_part_of_a_runs_identity():
    before = {"seed": 0, "model": {"name": "minilm", "lr": 5e-4}}
    null = {"seed": 0, "model": {"name": "minilm", "lr": 5e-4, "min_train_steps": None}}
    set_ = {"seed": 0, "model": {"name": "minilm", "lr": 5e-4, "min_train_steps": 400}}
    assert skip_existing.config_fingerprint(null) == skip_existing.config_fingerprint(before)
    assert skip_existing.config_fingerprint(set_) != skip_existing.config_fingerprint(before)
    assert null["model"]["min_train_steps"] is None  # the caller's dict is not changed


def test_a_run_trains_the_raised_length_and_says_so(tmp_path, capsys):
    """End to end on the tiny encoder: 38 training rows at 4 a batch are 10 steps an epoch; a floor of 25 trains 3
    epochs, 30 steps, and the result file and the summary say so."""
    overrides = [*TINY, "trainer.lightning.max_epochs=1", "model.min_train_steps=25"]
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["data"]["train_rows"] == 38  # 40 less the 5% validation carve
    assert result["training_length"]["max_epochs"] == 3 and result["training_length"]["raised_from"] == 1
    assert result["training_length"]["optimizer_steps"] == 30 == result["train_loss"]["steps"]  # micro-batches = steps here
    assert result["config"]["trainer"]["lightning"]["max_epochs"] == 1  # the config is what was asked
    out = capsys.readouterr().out
    assert re.search(r"^training +30 optimizer steps \(3 epochs: model.min_train_steps\) at lr 0.001", out, re.M)
