"""One run's life, as a straight line: validate -> tokenizer, task family, data, model -> method init (with
calibration) -> fit -> evaluate -> export -> result file. Every phase is a plain function in
:mod:`astra.run.steps`; :class:`astra.run.record.RunRecord` owns what happens when a phase fails or is interrupted
(the result file is always written, with status ``ok``, ``failed`` or ``interrupted``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from omegaconf import DictConfig

from astra.models.build import build_model, build_tokenizer
from astra.models.export import export_adapter, save_initial_adapter
from astra.run import console, hydra_support, results, skip_existing, steps
from astra.run.collapse import collapse_warnings
from astra.run.learning_rate import learning_rate_facts
from astra.run.record import RunRecord
from astra.run.resume import remove_checkpoint, resume_checkpoint
from astra.run.training_length import training_length
from astra.run.validation import check_dependent_settings, check_trains, validate_run_config
from astra.tasks.base import get_family

log = logging.getLogger("run")


def skipped_metric(cfg: DictConfig) -> float | None:
    """In a grid, a cell whose ``ok`` result exists is not run again (``skip_existing``); its metric, or None."""
    if not skip_existing.should_skip(cfg, hydra_support.in_multirun()):
        return None
    experiment = results.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    existing = skip_existing.find_ok_result(experiment, skip_existing.fingerprint_of(cfg))
    if existing is None:
        return None
    log.info("skipping: an ok result for this config exists at %s", existing["path"])
    skip_existing.record_skip(Path(cfg.paths.output_dir), existing)
    return float(existing.get("metrics", {}).get(cfg.task.eval.primary_metric, float("nan")))


def train(cfg: DictConfig, overrides: list[str] | None = None) -> float:
    """One run. Returns the task's primary metric (so Hydra sweepers can optimise it)."""
    skipped = skipped_metric(cfg)
    if skipped is not None:
        return skipped
    run_dir = Path(cfg.paths.output_dir)
    with RunRecord(cfg, run_dir, overrides if overrides is not None else hydra_support.task_overrides()) as record:
        record.facts["config_fingerprint"] = skip_existing.fingerprint_of(cfg)
        record.facts["project_root"] = skip_existing.PROJECT_ROOT  # the fingerprint writes it as ${astra_project:}
        phase = record.watch
        with phase("setup"):
            validate_run_config(cfg)
            check_dependent_settings(cfg, record.overrides)  # nothing the user gave may be silently ignored
            record.resume_from = resume_checkpoint(cfg, run_dir)
            device = record.device = steps.choose_device(cfg.trainer)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            family = get_family(cfg.task.family)  # built once: data, evaluation and calibration all use it
            tokenizer = build_tokenizer(cfg.model)
            datamodule = steps.build_datamodule(cfg, family, tokenizer)
            record.facts["data"] = steps.data_summary(datamodule)
            check_trains(cfg, record.facts["data"]["train_rows"])  # no trained row without training
            length = record.facts["training_length"] = training_length(cfg, record.facts["data"]["train_rows"])
            if length["raised_from"] is not None:
                log.info("training %d epochs (%d optimizer steps), not trainer.lightning.max_epochs=%d: %s",
                         length["max_epochs"], length["optimizer_steps"], length["raised_from"], length["reason"])
            model = build_model(cfg.model, cfg.seed, tokenizer, family.model_head(cfg.task))
            probe = steps.forgetting_probe(cfg, tokenizer, device, family)
        console.phase_line("setup", record.facts["data"], phase.seconds["setup"])
        if probe is not None:
            with phase("forgetting"):
                probe.before(model.to(device))
        with phase("init"):
            model, init_report = steps.apply_method(cfg, model, family, datamodule, device)
        record.facts["init"] = {k: v for k, v in init_report.items() if not k.startswith("_")}
        record.facts["parameters"] = steps.parameter_counts(model)
        console.init_line(cfg, record.facts["parameters"], phase.seconds["init"])
        rate = learning_rate_facts(cfg)
        log.info("learning rate %.3g (%s)", rate["value"], rate["source"])
        if record.main_process and record.resume_from is None:
            save_initial_adapter(cfg, model, run_dir)

        record.loggers, record.callbacks = steps.build_telemetry(cfg, run_dir, init_report, phase.seconds["init"])
        record.trainer = steps.build_trainer(cfg, device, record.loggers, record.callbacks, run_dir,
                                             max_epochs=length["max_epochs"])
        record.module = steps.build_module(cfg, model, device, family.head)
        record.main_process = record.trainer.is_global_zero
        with phase("train"):
            if cfg.method.get("trains", True):  # method=untrained: the model is scored as loaded
                steps.fit(record.module, datamodule, record.trainer, ckpt_path=record.resume_from)
                if record.trainer.global_step == 0:  # whatever the cause, a row that never trained is not ok
                    raise RuntimeError(f"method={cfg.method.name} finished fitting after 0 optimizer steps")
        if not record.main_process:
            return float("nan")

        with phase("eval"):
            evaluation = steps.evaluate(cfg, model, tokenizer, family, datamodule, device, run_dir)
        record.facts["metrics"], record.facts["eval_samples"] = evaluation["metrics"], evaluation["samples"]
        record.facts["items"] = evaluation["items"]  # per-item right/wrong, for paired intervals in the report
        if evaluation.get("secondary_items"):  # a second scoring of the same items (commonsense: log-likelihood)
            record.facts["secondary_items"] = evaluation["secondary_items"]
        record.facts["prediction_counts"] = evaluation.get("prediction_counts")  # classification: per class
        train_loss = results.loss_summary(record.module.loss_history())
        record.facts["warnings"] += collapse_warnings(evaluation, train_loss, rate, cfg.method.get("trains", True))
        if probe is not None:
            with phase("forgetting"):
                probe.after(model)
            record.facts["forgetting"] = probe.report()
            record.facts["metrics"]["forgetting"] = record.facts["forgetting"]["increase"]
        with phase("export"):
            record.facts["exported"] = export_adapter(cfg, model, run_dir)
            remove_checkpoint(run_dir)
    return float(record.facts["metrics"][cfg.task.eval.primary_metric])
