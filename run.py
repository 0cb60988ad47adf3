"""Fine-tune one model on one task with one initialisation method, evaluate it, write one result file.

    python run.py method=astra task=gsm8k                  # one run (defaults: conf/config.yaml)
    python run.py -m method=lora,pissa,astra seed=1,2,3    # a Hydra multirun grid
    python run.py resume=logs/runs/<run_dir>               # continue an interrupted run from its checkpoint

Reads as a straight line: validate -> tokenizer, data, model -> method init (with calibration) -> fit ->
evaluate -> result file. Every step is a plain function in ``astra.pipeline`` that a test can call. Whatever
happens (an error, a diverged loss, SIGINT or SIGTERM in any phase), the run writes its result file with
status ``ok``, ``failed`` or ``interrupted``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig

from astra import (  # hydra_support registers ${astra_uid:} before composing
    hydra_support,
    pipeline,
    results,
    skip_existing,
)
from astra.checkpointing import resume_argv
from astra.interrupts import RunInterrupted, interruption_guard
from astra.models import build_model, build_tokenizer
from astra.run_record import RunRecord
from astra.training import TrainingDivergedError
from astra.validation import validate_run_config

log = logging.getLogger("run")


def train(cfg: DictConfig, overrides: list[str] | None = None) -> float:
    """One run. Returns the task's primary metric (so Hydra sweepers can optimise it)."""
    run_dir = Path(cfg.paths.output_dir)
    fingerprint = skip_existing.fingerprint_of(cfg)
    if skip_existing.should_skip(cfg, hydra_support.in_multirun()):
        existing = skip_existing.find_ok_result(results.experiment_dir(cfg.paths.results_dir, cfg.experiment_name), fingerprint)
        if existing is not None:  # this cell of the grid is done: its result stands (skip_existing=false reruns)
            log.info("skipping: an ok result for this config exists at %s", existing["path"])
            skip_existing.record_skip(run_dir, existing)
            return float(existing.get("metrics", {}).get(cfg.task.eval.primary_metric, float("nan")))
    record = RunRecord(cfg, run_dir, overrides if overrides is not None else hydra_support.task_overrides())
    record.facts["config_fingerprint"] = fingerprint
    record.facts["project_root"] = skip_existing.PROJECT_ROOT  # the fingerprint writes it as ${astra_project:}
    watch = record.watch
    # Under multi-GPU strategies every rank runs this function; each computes the same seeded init, but only
    # global rank 0 evaluates, exports and writes the result file.
    main_process = pipeline.is_main_process()
    loggers, callbacks, module, trainer, probe = [], [], None, None, None
    with interruption_guard() as guard:
        try:
            with watch("setup"):
                validate_run_config(cfg)
                record.resume_from = pipeline.resume_checkpoint(cfg, run_dir)
                device = record.device = pipeline.choose_device(cfg.trainer)
                pl.seed_everything(cfg.seed, workers=True)
                tokenizer = build_tokenizer(cfg.model)
                datamodule = pipeline.build_datamodule(cfg, tokenizer)
                record.facts["data"] = pipeline.data_summary(datamodule)
                model = build_model(cfg.model, cfg.seed, tokenizer, datamodule.family.model_head(cfg.task))
                probe = pipeline.forgetting_probe(cfg, tokenizer, device, datamodule.family)
            if probe is not None:
                with watch("forgetting"):
                    probe.before(model.to(device))
            with watch("init"):
                model, init_report = pipeline.apply_method(cfg, model, datamodule, device)
            record.facts["init"] = {k: v for k, v in init_report.items() if not k.startswith("_")}
            record.facts["parameters"] = pipeline.parameter_counts(model)
            if main_process and record.resume_from is None:
                pipeline.save_initial_adapter(cfg, model, run_dir)

            loggers, callbacks = pipeline.build_telemetry(cfg, run_dir, init_report, watch.seconds["init"])
            trainer = pipeline.build_trainer(cfg, device, loggers, callbacks, run_dir)
            module = pipeline.build_module(cfg, model, device, datamodule.family.head)
            main_process = trainer.is_global_zero
            with watch("train"):
                if cfg.method.get("trains", True):  # method=untrained: the model is scored as loaded
                    pipeline.fit(module, datamodule, trainer, ckpt_path=record.resume_from)
            if not main_process:
                return float("nan")

            with watch("eval"):
                evaluation = pipeline.evaluate(cfg, model, tokenizer, datamodule, device, run_dir)
            record.facts["metrics"], record.facts["eval_samples"] = evaluation["metrics"], evaluation["samples"]
            record.facts["items"] = evaluation["items"]  # per-item right/wrong, for paired intervals in the report
            if probe is not None:
                with watch("forgetting"):
                    probe.after(model)
                record.facts["forgetting"] = probe.report()
                record.facts["metrics"]["forgetting"] = record.facts["forgetting"]["increase"]
            with watch("export"):
                record.facts["exported"] = pipeline.export_adapter(cfg, model, run_dir)
                pipeline.remove_checkpoint(run_dir)
        except RunInterrupted as exc:
            record.interrupted(exc)
            raise
        except BaseException as exc:  # the result file records the failure; the error still propagates
            # A NaN loss can surface first as another error (an SVD in telemetry, a NaN in generation): name it.
            diverged = exc if isinstance(exc, TrainingDivergedError) else module.first_divergence() if module else None
            record.failed(exc, diverged)
            log.error("run failed: %s\n%s", record.error, traceback.format_exc())
            if diverged is not None and diverged is not exc:
                raise diverged from exc
            raise
        finally:
            guard.shield()  # a second signal must not cut the result file short
            if module is not None:
                record.facts["train_loss"] = results.loss_summary(module.loss_history())
                record.facts["resumed_from_step"] = module.resumed_from_step
            if trainer is not None:
                record.facts["steps_done"] = int(trainer.global_step)
            record.facts["telemetry"] = pipeline.telemetry_summary(callbacks)
            record.facts["series"] = pipeline.telemetry_series(  # for the report's figures (never read from W&B)
                callbacks, record.facts["train_loss"]["per_step"], cfg.trainer.lightning.accumulate_grad_batches
            )
            pipeline.finish_telemetry(loggers, failed=record.status != "ok", summary=record.facts["telemetry"])
            if main_process:
                try:
                    paths = record.write(Path(cfg.paths.results_dir))
                    log.info("result (%s) written to %s", record.status, ", ".join(map(str, paths)))
                except Exception:
                    if record.status == "ok":
                        raise
                    log.exception("could not write the result file; the run's own error follows")
    return float(record.facts["metrics"][cfg.task.eval.primary_metric])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except RunInterrupted as exc:
        # 130 / 143, as a shell reports a death by SIGINT / SIGTERM, so schedulers see a preempted job.
        sys.exit(exc.exit_code)
    except Exception:
        if not hydra_support.in_multirun():
            raise
        # In a multirun the other jobs still run; the closing report (MultirunReport) lists every failed job
        # and makes the command fail.
        return float("nan")


if __name__ == "__main__":
    sys.argv = resume_argv(sys.argv)
    main()
    if hydra_support.FAILED_JOBS_REPORT:  # a multirun with failed jobs: list them all and fail the command
        print(hydra_support.FAILED_JOBS_REPORT, file=sys.stderr)
        sys.exit(1)
