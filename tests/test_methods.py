"""Every method YAML: init preserves the model's output, is deterministic, runs end to end; residual
methods export a plain LoRA that reproduces the trained model on the ORIGINAL base."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONF_DIR, compose_config, config_groups
from omegaconf import OmegaConf

from astra.models.adapters import lora_layers
from astra.models.build import build_model_and_tokenizer
from astra.models.export import export_adapter, save_initial_adapter
from astra.run import runner, steps
from astra.tasks.base import get_family

METHODS = config_groups()["method"]
RESIDUAL = [m for m in METHODS if OmegaConf.load(CONF_DIR / "method" / f"{m}.yaml").get("residual")]
FAST = ["trainer=debug", "logger=none", "trainer.eval_limit=4", "task.eval.max_new_tokens=8"]
# Methods that run on one task family only, set up on a task of it (the default is a causal LM on gsm8k).
SETTING = {"head_only": ["model=tiny_bert", "task=qnli"]}


def fast(method):
    """FAST, on the method's own task family where it has one (a GLUE task has no max_new_tokens)."""
    return [*FAST[:3], *SETTING[method]] if method in SETTING else FAST


def _setup(tmp_path, method, extra=()):
    cfg = compose_config(tmp_path, [f"method={method}", *fast(method), *extra])
    model, tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed, get_family(cfg.task.family).model_head(cfg.task))
    datamodule = steps.build_datamodule(cfg, get_family(cfg.task.family), tokenizer)
    return cfg, model, datamodule


def _probe_batch(datamodule):
    return next(iter(datamodule.calibration_dataloader(n_samples=4, batch_size=4)))


@torch.no_grad()
def _logits(model, batch):
    model.eval()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train()
    return out


def _max_relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("method", METHODS)
def test_init_preserves_model_output(tmp_path, method):
    cfg, model, datamodule = _setup(tmp_path, method)
    if not cfg.method.get("preserves_output_at_init", True):
        pytest.skip(f"{method} does not promise an unchanged output at init")
    batch = _probe_batch(datamodule)
    before = _logits(model, batch)
    model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    after = _logits(model, batch)
    assert _max_relative_difference(after, before) < 1e-5
    if cfg.method.peft is not None:
        assert sum(1 for _ in lora_layers(model)) == 4 * 7  # every projection of the 4 tiny layers


def test_head_only_trains_exactly_the_modules_adapter_arms_train_in_full(tmp_path):
    """The control arm: after a short fit only the classifier and the pooler changed, and they are the modules
    LoRA's run trains in full besides its adapters (PEFT modules_to_save)."""
    cfg, model, datamodule = _setup(tmp_path, "head_only", ["optim.lr=1e-2"])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model, report = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    assert report["trainable_modules"] == ["bert.pooler.dense", "classifier"]
    trainer = steps.build_trainer(cfg, torch.device("cpu"), [], [], tmp_path / "run")
    steps.fit(steps.build_module(cfg, model, torch.device("cpu"), datamodule.family.head), datamodule, trainer)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}

    lora_cfg = compose_config(tmp_path, ["method=lora", *fast("head_only")])
    lora_model, _ = build_model_and_tokenizer(lora_cfg.model, lora_cfg.seed, datamodule.family.model_head(lora_cfg.task))
    lora_model, _ = steps.apply_method(lora_cfg, lora_model, datamodule.family, datamodule, torch.device("cpu"))
    full_in_lora = {name.replace("modules_to_save.default.", "").removeprefix("base_model.model.")
                    for name, p in lora_model.named_parameters() if p.requires_grad and "lora_" not in name}  # fmt: skip
    assert full_in_lora == changed


def test_head_only_is_refused_where_there_is_no_classification_head(tmp_path):
    from astra.run.validation import ConfigError, validate_run_config

    cfg = compose_config(tmp_path, ["method=head_only", *FAST])  # a causal LM on gsm8k
    with pytest.raises(ConfigError, match="method=head_only runs on tasks of task.family glue only; task=gsm8k"):
        validate_run_config(cfg)


def _adapter_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k or "base_layer" in k}


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("full", "lora", "untrained", "head_only")])
def test_same_seed_gives_bit_identical_factors(tmp_path, method):
    states = []
    for _ in range(2):
        cfg, model, datamodule = _setup(tmp_path, method, ["paths.cache_dir=null"])
        model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
        states.append(_adapter_state(model))
    assert states[0].keys() == states[1].keys() and states[0]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_pissa_is_peft_pissa(tmp_path):
    from peft import LoraConfig, get_peft_model

    cfg, model, datamodule = _setup(tmp_path, "pissa")
    reference_base, _ = build_model_and_tokenizer(cfg.model, cfg.seed)
    ours, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    reference = get_peft_model(
        reference_base,
        LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.model.target_modules),
                   init_lora_weights="pissa_niter_16", task_type="CAUSAL_LM"),
    )  # fmt: skip
    ours_state, reference_state = _adapter_state(ours), _adapter_state(reference)
    assert ours_state.keys() == reference_state.keys()
    for key in ours_state:
        assert torch.equal(ours_state[key], reference_state[key]), key


def test_dora_with_residual_conversion_is_refused(tmp_path):
    cfg, model, datamodule = _setup(tmp_path, "pissa", ["+method.peft.use_dora=true"])
    with pytest.raises(ValueError, match="drop the trained DoRA magnitude"):
        steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))


@pytest.mark.parametrize("method", RESIDUAL)
def test_residual_export_loads_on_original_base(tmp_path, method):
    from peft import PeftModel

    cfg, model, datamodule = _setup(tmp_path, method, ["optim.lr=1e-2"])
    run_dir = tmp_path / "run"
    model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    save_initial_adapter(cfg, model, run_dir)
    trainer = steps.build_trainer(cfg, torch.device("cpu"), [], [], run_dir)
    steps.fit(steps.build_module(cfg, model, torch.device("cpu")), datamodule, trainer)
    exported = export_adapter(cfg, model, run_dir)
    batch = _probe_batch(datamodule)
    trained = _logits(model, batch)

    original_base, _ = build_model_and_tokenizer(cfg.model, cfg.seed)
    converted = PeftModel.from_pretrained(original_base, exported["adapter_converted"])
    assert converted.peft_config["default"].r == 2 * cfg.rank
    assert _max_relative_difference(_logits(converted, batch), trained) < 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_run_end_to_end(tmp_path, method):
    cfg = compose_config(tmp_path, [f"method={method}", "task=gsm8k", *FAST] if method not in SETTING
                         else [f"method={method}", *fast(method)])
    runner.train(cfg, overrides=[f"method={method}"])
    (file,) = sorted((tmp_path / "results").rglob("*.json"))
    result = json.loads(file.read_text())
    assert result["status"] == "ok" and result["method"] == method
    assert result["train_loss"]["steps"] == (5 if cfg.method.get("trains", True) else 0)  # untrained: scored as loaded
    if cfg.method.get("residual"):
        assert (tmp_path / "run" / "adapter_converted" / "adapter_config.json").is_file()
