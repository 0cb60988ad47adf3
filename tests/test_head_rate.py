"""optim.head_lr: the classification head's own rate beside an adapter's, so a tuned optim.lr moves the adapters
alone; refused where there is no such pair; results recorded before the setting keep their identity."""

from __future__ import annotations

import pytest
from conftest import compose_config
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from astra.run.learning_rate import learning_rate_source
from astra.run.skip_existing import config_fingerprint
from astra.run.validation import ConfigError, validate_run_config
from astra.training.module import CausalLMModule

OPTIM = {"lr": 1e-4, "weight_decay": 0.0, "warmup_ratio": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}


def tiny_classifier():
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)  # fmt: skip
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"],
                      modules_to_save=["pooler"])  # fmt: skip
    return get_peft_model(BertForSequenceClassification(config), lora)


def test_the_head_gets_its_own_group_and_rate_and_the_adapters_keep_optim_lr():
    model = tiny_classifier()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head_names = {name for name in trainable if {"classifier", "pooler"} & set(name.split("."))}
    assert head_names and all("lora_" not in name for name in head_names)
    by_id = {id(p): name for name, p in model.named_parameters()}

    one = CausalLMModule(model, OmegaConf.create({**OPTIM, "head_lr": None})).parameter_groups()
    assert len(one) == 1 and {by_id[id(p)] for p in one[0]["params"]} == trainable and "lr" not in one[0]

    adapters, head = CausalLMModule(model, OmegaConf.create({**OPTIM, "head_lr": 1e-3})).parameter_groups()
    assert {by_id[id(p)] for p in head["params"]} == head_names and head["lr"] == 1e-3
    assert {by_id[id(p)] for p in adapters["params"]} == trainable - head_names and "lr" not in adapters
    assert all("lora_" in by_id[id(p)] for p in adapters["params"])


def test_head_lr_is_refused_without_an_adapter_and_a_head(tmp_path):
    ok = compose_config(tmp_path, ["model=tiny_bert", "task=sst2", "method=lora", "optim.head_lr=0.01"])
    validate_run_config(ok)
    assert "optim.head_lr 0.01" in learning_rate_source(ok)
    validate_run_config(compose_config(tmp_path, ["model=tiny_bert", "task=sst2", "method=untrained",
                                                  "optim.head_lr=0.01"]))  # nothing trains: no rate applies  # fmt: skip
    for overrides, named in ((["model=tiny_bert", "task=sst2", "method=full"], "method=full"),
                             (["task=gsm8k", "method=lora"], "task=gsm8k"),
                             (["model=tiny_bert", "task=sst2", "method=head_only"], "method=head_only")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"optim.head_lr=0.01 .*{named}"):
            validate_run_config(compose_config(tmp_path, [*overrides, "optim.head_lr=0.01"]))
    with pytest.raises(ConfigError, match="optim.head_lr=-1"):
        validate_run_config(compose_config(tmp_path, ["model=tiny_bert", "task=sst2", "method=lora", "optim.head_lr=-1"]))


def test_a_result_recorded_before_head_lr_keeps_its_fingerprint(tmp_path):
    cfg = OmegaConf.to_container(compose_config(tmp_path, ["model=tiny_bert", "task=sst2"]), resolve=True)
    before = {**cfg, "optim": {k: v for k, v in cfg["optim"].items() if k != "head_lr"}}
    assert config_fingerprint(cfg) == config_fingerprint(before)
    assert config_fingerprint({**cfg, "optim": {**cfg["optim"], "head_lr": 1e-3}}) != config_fingerprint(before)
