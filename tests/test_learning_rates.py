"""Method-aware default rates (optim.lr = model.lr x method.lr_scale), where the rate came from, Astra's default
eigensolver, and the warning for a run that trained but collapsed."""

from __future__ import annotations

import json
import re

import pytest
from conftest import CONF_DIR, ROOT, compose_config, config_groups
from omegaconf import OmegaConf

from astra.run import collapse, runner, skip_existing
from astra.run.learning_rate import learning_rate_source, scaled

METHODS = config_groups()["method"]


def yaml_factor(method: str) -> float:
    return float(OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml").lr_scale)


def table_factors(text: str, first_column: str) -> dict[str, float]:
    """``method -> lr_scale`` from a markdown table whose header has ``lr_scale``."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} ") and "lr_scale" in line)
    column = [cell.strip() for cell in lines[header].strip("|").split("|")].index("lr_scale")
    found = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found[cells[0].strip("`")] = float(cells[column])
    return found


def test_every_method_yaml_has_a_factor_and_the_docs_agree():
    factors = {method: yaml_factor(method) for method in METHODS}
    assert all(0 < factor <= 1 for factor in factors.values()), factors
    assert table_factors((ROOT / "README.md").read_text(encoding="utf-8"), "method") == factors
    assert table_factors((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"), "method") == factors
    # inits that start with a large adapter product get a lower rate than LoRA (the published comparison's finding)
    assert factors["lora"] == factors["dora"] == factors["astra_bottom"] == 1.0
    assert max(factors["pissa"], factors["lora_ga"], factors["astra"], factors["astra_random"]) < 1.0


@pytest.mark.parametrize("method", METHODS)
def test_the_default_rate_is_the_models_rate_times_the_factor(tmp_path, method):
    cfg = compose_config(tmp_path, [f"method={method}", "model=minilm", "task=qnli"])
    assert cfg.optim.lr == pytest.approx(1.0e-3 * yaml_factor(method), rel=1e-12)
    expected = f"model.lr 0.001 x method.lr_scale {yaml_factor(method):g}"
    assert learning_rate_source(cfg) == expected


def test_an_explicit_rate_wins_and_experiments_that_set_rates_ignore_the_factor(tmp_path):
    cfg = compose_config(tmp_path, ["method=astra", "optim.lr=3e-3"])
    assert cfg.optim.lr == 3e-3 and learning_rate_source(cfg) == "optim.lr given"
    shared = compose_config(tmp_path, ["experiment=real_qnli_shared", "method=astra"])
    assert shared.optim.lr == 5.0e-4 and learning_rate_source(shared) == "optim.lr: ${model.lr}"
    chosen = compose_config(tmp_path, ["experiment=real_qnli_test", "method=astra"])
    assert chosen.optim.lr == 1.0e-4  # the rate phase 1 chose, not 1e-4 x 0.1
    glue = compose_config(tmp_path, ["experiment=nlu_glue", "method=pissa"])
    assert glue.optim.lr == 5.0e-4


def test_scaled_rounds_away_float_noise():
    assert scaled(5.0e-4, 0.1) == 5.0e-5 and repr(scaled(5.0e-4, 0.1)) == "5e-05"


def test_astra_solves_with_auto_by_default_and_the_published_comparison_pins_exact(tmp_path):
    for method in ("astra", "astra_bottom", "astra_random"):
        assert compose_config(tmp_path, [f"method={method}"]).method.init.eigensolver == "auto"
    assert compose_config(tmp_path, ["method=astra", "eigensolver=exact"]).method.init.eigensolver == "exact"
    for experiment in ("real_qnli_lr", "real_qnli_test", "real_qnli_shared", "real_commonsense_lr",
                       "real_commonsense_test", "real_commonsense_shared"):  # fmt: skip
        cfg = compose_config(tmp_path, [f"experiment={experiment}", "method=astra"])
        assert cfg.method.init.eigensolver == "exact", experiment


def test_derived_inputs_do_not_change_a_cells_identity():
    """method.lr_scale and the run-wide eigensolver act only through optim.lr and method.init.eigensolver, which are
    hashed: a config recorded before they existed keeps its fingerprint; a different resolved rate does not."""
    before = {"seed": 0, "method": {"name": "astra", "init": {"eigensolver": "exact"}}, "optim": {"lr": 1e-4}}
    after = {"seed": 0, "eigensolver": "exact", "method": {"name": "astra", "lr_scale": 0.1,
                                                           "init": {"eigensolver": "exact"}}, "optim": {"lr": 1e-4}}
    assert skip_existing.config_fingerprint(before) == skip_existing.config_fingerprint(after)
    assert after["method"]["lr_scale"] == 0.1  # the caller's dict is not changed
    other_rate = json.loads(json.dumps(after))
    other_rate["optim"]["lr"] = 1e-5
    assert skip_existing.config_fingerprint(other_rate) != skip_existing.config_fingerprint(after)


RATE = {"value": 5e-4, "source": "model.lr 0.0005 x method.lr_scale 1"}


def test_a_single_class_classifier_is_flagged():
    warning = collapse.single_class_warning({"0": 200}, RATE)
    assert warning.startswith("collapse: every one of the 200 test items was predicted as class '0'")
    assert "0.0005" in warning and "optim.lr" in warning and "lr_scale" in warning
    assert collapse.single_class_warning({"0": 150, "1": 50}, RATE) is None
    assert collapse.single_class_warning(None, RATE) is None


def test_a_climbing_loss_is_flagged_and_a_flat_or_falling_one_is_not():
    def summary(losses):
        return {"steps": len(losses), "per_step": losses}

    climbing = [1.7] * 10 + [3.0] * 20 + [11.5] * 10
    assert collapse.climbing_loss_warning(summary(climbing), RATE).startswith("loss climbed")
    assert collapse.climbing_loss_warning(summary([0.694] * 20 + [0.6943] * 20), RATE) is None  # flat
    assert collapse.climbing_loss_warning(summary([2.0] * 20 + [1.0] * 20), RATE) is None
    assert collapse.climbing_loss_warning(summary([1.0, 5.0, 9.0]), RATE) is None  # too short to judge
    evaluation = {"prediction_counts": {"1": 9}}
    assert len(collapse.collapse_warnings(evaluation, summary(climbing), RATE, trained=True)) == 2
    assert collapse.collapse_warnings(evaluation, summary(climbing), RATE, trained=False) == []


def test_a_collapsed_run_stays_ok_and_says_so(tmp_path, monkeypatch, capsys):
    """End to end on the tiny encoder: a classifier that predicts one class finishes ok with a warning in the result
    file and in the closing summary."""
    from astra.tasks.glue import GlueFamily

    monkeypatch.setattr(GlueFamily, "predict", lambda self, model, tokenizer, rows, *args, **kwargs: [0] * len(rows))
    overrides = ["model=tiny_bert", "task=qnli", "method=lora", "logger=none", "callbacks=none", "trainer=debug",
                 "trainer.lightning.max_steps=2", "trainer.batch_size=4"]  # fmt: skip
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["learning_rate"] == 1e-3 and result["learning_rate_source"] == "model.lr 0.001 x method.lr_scale 1"
    assert len(result["warnings"]) == 1 and result["warnings"][0].startswith("collapse: every one of the")
    assert set(result["prediction_counts"]) == {"0"}
    assert re.search(r"^warning +collapse: every one", capsys.readouterr().out, re.MULTILINE)
