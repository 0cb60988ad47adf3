"""The phases :mod:`astra.run.runner` chains: each a plain function a test can call on its own."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from astra.calibration.identity import calibration_cache_identity
from astra.data.datamodule import TaskDataModule
from astra.methods.base import InitContext
from astra.models.adapters import lora_layers
from astra.models.export import check_export_supported
from astra.run.checkpointing import PeriodicCheckpoint
from astra.tasks.base import EvalSettings, TaskFamily, get_family
from astra.training.module import CausalLMModule, SequenceClassificationModule

log = logging.getLogger(__name__)

# Per task-family head (TaskFamily.head): the PEFT task type and the Lightning module.
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}
MODULES = {"causal_lm": CausalLMModule, "sequence_classification": SequenceClassificationModule}


def process_ranks() -> tuple[int, int]:
    """(global rank, local rank) of this process: 0, 0 unless a multi-process launcher (Lightning DDP,
    torchrun, SLURM) set them."""
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
    # Lightning's own DDP launcher sets only LOCAL_RANK in the processes it starts (one node).
    global_rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", local_rank)))
    return global_rank, local_rank


def is_main_process() -> bool:
    """Only the global rank 0 evaluates, exports and writes the result file."""
    return process_ranks()[0] == 0


def choose_device(trainer_cfg: Any) -> torch.device:
    accelerator = str(trainer_cfg.lightning.get("accelerator", "auto"))
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", process_ranks()[1])
    return torch.device("cpu")


def choose_precision(trainer_cfg: Any, device: torch.device) -> str:
    """``auto``: bf16-mixed on a GPU that supports bf16, full 32-bit otherwise (CPU included)."""
    precision = str(trainer_cfg.lightning.get("precision", "auto"))
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_datamodule(cfg: DictConfig, family: TaskFamily, tokenizer) -> TaskDataModule:
    datamodule = TaskDataModule(
        cfg.task,
        family,
        tokenizer,
        batch_size=cfg.trainer.batch_size,
        seed=cfg.seed,
        val_size=cfg.trainer.val_size,
        num_workers=cfg.trainer.num_workers,
    )
    family.check_ready(cfg.task)  # before any row is read: refuse early what evaluation would refuse
    datamodule.setup()
    return datamodule


def data_summary(datamodule: TaskDataModule) -> dict[str, int]:
    """Row counts for the result file: what was trained, held out, left out and scored."""
    return {
        "train_rows": len(datamodule.train_set),
        "val_rows": len(datamodule.val_set) if datamodule.val_set else 0,
        "rows_without_target": datamodule.rows_without_target,
        "test_rows": len(datamodule.test_examples),
    }


def check_rank_fits(model: torch.nn.Module, target_modules: list[str], rank: int) -> None:
    """A rank above min(d_in, d_out) of any target layer is an error, not a silent clamp."""
    matched = 0
    for name, module in model.named_modules():
        # PEFT's rule for a list: the module's name is the entry or ends with "." + entry ("output.dense").
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules):
            matched += 1
            limit = min(module.in_features, module.out_features)
            if rank > limit:
                raise ValueError(
                    f"rank={rank} is larger than layer {name} allows ({module.out_features} x "
                    f"{module.in_features}: at most {limit}); choose rank <= {limit}"
                )
    if matched == 0:
        raise ValueError(f"no nn.Linear layer matches target_modules={list(target_modules)}")


def calibration_identity(cfg: DictConfig, loader) -> dict[str, Any]:
    """What the calibration statistics depend on besides the method's options (cache key): the content of the
    calibration batches and a fingerprint of the model, never names alone. The names are labels for readers."""
    return calibration_cache_identity(
        cfg.model,
        cfg.seed,
        loader,
        cfg.model.target_modules,
        extra={"model": cfg.model.name, "task": cfg.task.name, "task_source": cfg.task.source,
               "calibration_source": cfg.get("calibration_source", "task")},
    )


def apply_method(cfg: DictConfig, model: torch.nn.Module, family: TaskFamily, datamodule: TaskDataModule,
                 device: torch.device):
    """Wrap with PEFT as the method YAML says, then run its init callable. Returns (model, report)."""
    method = cfg.method
    check_export_supported(method)
    init_fn = hydra.utils.instantiate(method.init)
    model.to(device)
    if method.peft is not None:
        from peft import LoraConfig, get_peft_model

        peft_kwargs = OmegaConf.to_container(method.peft, resolve=True)
        check_rank_fits(model, peft_kwargs["target_modules"], peft_kwargs["r"])
        torch.manual_seed(cfg.seed)  # Kaiming init of A and PiSSA's randomized SVD are seeded
        task_type = PEFT_TASK_TYPES[family.head]  # SEQ_CLS: the new classifier head trains in full
        head_modules = cfg.model.get("head_modules")  # e.g. BERT's pooler: trained in full with the classifier
        if head_modules and task_type == "SEQ_CLS":
            peft_kwargs["modules_to_save"] = list(head_modules)
        model = get_peft_model(model, LoraConfig(task_type=task_type, **peft_kwargs))
    loader, extra = None, {}
    if method.get("calibration"):
        from astra.calibration.source import calibration_loader

        # calibration_source: this task's rows, another task's (its family built here: calibration sits below tasks)
        loader = calibration_loader(cfg, datamodule, family, family_of=get_family)
        extra["n_samples"] = method.calibration.n_samples
    context = InitContext(
        seed=cfg.seed,
        device=device,
        cache_dir=Path(cfg.paths.cache_dir) if cfg.paths.get("cache_dir") else None,
        cache_key=calibration_identity(cfg, loader) if loader is not None else {},
        moment_spectrum="effective_rank" in (cfg.get("callbacks") or {}),
    )
    if loader is not None:  # launched on N ranks: each calibrates on its share, the sums are all-reduced
        from astra.calibration.distributed import ensure_process_group, shard_loader, world

        if ensure_process_group():
            loader = shard_loader(loader, *world())
    torch.manual_seed(cfg.seed)
    report = init_fn(model, loader, context, **extra) or {}
    # Training's randomness (dropout, batch order) must not depend on what init did: a calibration cache miss iterates
    # the calibration loader, and every DataLoader iterator draws from the global generator, where a hit draws nothing.
    torch.manual_seed(cfg.seed)
    if method.peft is not None and not any(True for _ in lora_layers(model)):
        raise RuntimeError("PEFT wrapped no layer; check model.target_modules")
    model.train()
    return model, report


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    from astra.telemetry.run_facts import parameter_counts as count

    trainable, total = count(model)
    return {"trainable": trainable, "total": total}


def build_trainer(cfg: DictConfig, device: torch.device, loggers: list, callbacks: list, run_dir: Path,
                  max_epochs: int | None = None) -> pl.Trainer:
    """``max_epochs``: the epochs :func:`astra.run.training_length.training_length` settled on (None: the config's)."""
    kwargs = OmegaConf.to_container(cfg.trainer.lightning, resolve=True)
    if max_epochs is not None:
        kwargs["max_epochs"] = max_epochs
    kwargs["precision"] = choose_precision(cfg.trainer, device)
    from astra.training.strategies import check_strategy_available

    check_strategy_available(kwargs.get("strategy"))
    if isinstance(kwargs.get("strategy"), dict):  # a strategy object (trainer=fsdp): built from its _target_
        kwargs["strategy"] = hydra.utils.instantiate(kwargs["strategy"])
    if not cfg.trainer.val_size:
        kwargs["limit_val_batches"] = 0  # no validation split: skip the loop instead of warning about it
    if kwargs.get("accelerator", "auto") == "auto":
        kwargs["accelerator"] = "gpu" if device.type == "cuda" else "cpu"
    every = cfg.trainer.get("checkpoint_every_n_steps")
    checkpointing = [PeriodicCheckpoint(run_dir, every)] if every else []
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=[*callbacks, *checkpointing],
        enable_checkpointing=False,  # PeriodicCheckpoint saves what resuming needs: never the frozen base model
        **kwargs,
    )


def forgetting_probe(cfg: DictConfig, tokenizer, device: torch.device, family=None):
    """The generic-text loss probe (``cfg.forgetting``), or None when disabled or when the task's model is not a
    language model (a classifier has no generic-text loss)."""
    if not cfg.get("forgetting") or not cfg.forgetting.enabled:
        return None
    if family is not None and family.head != "causal_lm":
        log.info("forgetting is measured for causal-LM tasks only; task %s trains a %s head", cfg.task.name, family.head)
        return None
    from astra.training.forgetting import ForgettingProbe

    return ForgettingProbe(cfg.forgetting, tokenizer, device)


def evaluate(cfg: DictConfig, model, tokenizer, family: TaskFamily, datamodule: TaskDataModule, device: torch.device,
             run_dir: Path) -> dict:
    """Score the test split with the task family's protocol; every generation and score goes to
    ``<run_dir>/eval/<task>.jsonl``."""
    settings = EvalSettings(limit=cfg.trainer.eval_limit, device=device, records_path=run_dir / "eval" / f"{cfg.task.name}.jsonl")
    model.to(device)
    return family.evaluate(model, tokenizer, datamodule.test_examples, cfg.task, settings)


def finite_check_interval(cfg: DictConfig, device: torch.device) -> int:
    """``auto``: every step on CPU (a host read costs nothing there), every 10 steps on a GPU."""
    every = cfg.trainer.get("check_finite_every_n_steps", "auto")
    if every == "auto":
        return 1 if device.type == "cpu" else 10
    return int(every)


def build_module(cfg: DictConfig, model, device: torch.device, head: str = "causal_lm") -> CausalLMModule:
    """The Lightning module for the task family's head (``TaskFamily.head``)."""
    every = finite_check_interval(cfg, device) * int(cfg.trainer.lightning.get("accumulate_grad_batches", 1))
    return MODULES[head](model, cfg.optim, check_finite_every_n_steps=every)


def fit(module: CausalLMModule, datamodule: TaskDataModule, trainer: pl.Trainer, ckpt_path: Path | None = None) -> None:
    with warnings.catch_warnings():
        # The data position is restored by TaskDataModule.load_state_dict, not by the loader Lightning checks.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)


def build_telemetry(cfg: DictConfig, run_dir: Path, init_report: dict, init_seconds: float) -> tuple[list, list]:
    """Loggers from ``cfg.logger`` and callbacks from ``cfg.callbacks`` (a dict of ``_target_`` nodes)."""
    from astra.telemetry.loggers import build_loggers
    from astra.telemetry.summary import attach_run_info, instantiate_callbacks

    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    attach_run_info(callbacks, init_time_s=init_seconds, init_report=init_report)
    run_name = f"{cfg.method.name}-{cfg.task.name}-{cfg.seed}"
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return build_loggers(cfg.logger, run_dir, run_name, cfg.experiment_name, config), callbacks


def telemetry_summary(callbacks: list) -> dict[str, Any]:
    """The callbacks' summary figures (final loss, mean gradient norm over the first 100 steps, final mean
    effective rank, tokens/s, ...) for the result file, so tables never depend on W&B."""
    if not callbacks:
        return {}
    from astra.telemetry.summary import collect_summary

    return collect_summary(callbacks)


def telemetry_series(callbacks: list, losses: list[float], accumulate: int) -> dict[str, Any]:
    """The per-step series the report's figures read: ``train/loss`` (the mean over each optimizer step's
    micro-batches, step 1 first) and the callbacks' (gradient norm, learning rate, effective rank, ...), each at
    most 1000 points."""
    from astra.telemetry.summary import collect_series, downsample

    series = collect_series(callbacks) if callbacks else {}
    accumulate = max(1, int(accumulate))
    steps = [(k // accumulate + 1, losses[k : k + accumulate]) for k in range(0, len(losses), accumulate)]
    points = downsample([(step, sum(chunk) / len(chunk)) for step, chunk in steps])
    if points:
        series["train/loss"] = {"step": [p[0] for p in points], "value": [p[1] for p in points]}
    return series


def finish_telemetry(loggers: list, failed: bool, summary: dict | None = None) -> None:
    """Always called (also on error): W&B runs are finished so one failed job cannot break a multirun."""
    if loggers:
        from astra.telemetry.loggers import finish_loggers

        finish_loggers(loggers, failed=failed, summary=summary)
