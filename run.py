"""Fine-tune one model on one task with one initialisation method, evaluate it, write one result file.

    python run.py method=astra task=gsm8k                  # one run (defaults: conf/config.yaml)
    python run.py -m method=lora,pissa,astra seed=1,2,3    # a Hydra multirun grid

Reads as a straight line: compose -> model -> data -> method init (with calibration) -> fit -> evaluate ->
result file. Every step is a plain function in ``astra.pipeline`` that a test can call.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from astra import pipeline, results
from astra.evaluation import evaluate_generation
from astra.models import build_model_and_tokenizer

log = logging.getLogger("run")


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def train(cfg: DictConfig, overrides: list[str] | None = None) -> float:
    """One run. Returns the task's primary metric (so Hydra sweepers can optimise it)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    watch, created = pipeline.Stopwatch(), results.now_iso()
    facts: dict[str, Any] = {"metrics": {}, "train_loss": results.loss_summary([]), "parameters": None}
    device = pipeline.choose_device(cfg.trainer)
    # Under multi-GPU strategies every rank runs this function; each computes the same seeded init, but only
    # rank 0 evaluates, exports and writes the result file.
    main_process = pipeline.is_main_process()
    loggers, callbacks, status, error = [], [], "ok", None
    try:
        pl.seed_everything(cfg.seed, workers=True)
        model, tokenizer = build_model_and_tokenizer(cfg.model, cfg.seed)
        datamodule = pipeline.build_datamodule(cfg, tokenizer)
        with watch("init"):
            model, init_report = pipeline.apply_method(cfg, model, datamodule, device)
        facts["init"] = {k: v for k, v in init_report.items() if not k.startswith("_")}
        facts["parameters"] = pipeline.parameter_counts(model)
        if main_process:
            pipeline.save_initial_adapter(cfg, model, run_dir)

        loggers, callbacks = pipeline.build_telemetry(cfg, run_dir, init_report, watch.seconds["init"])
        trainer = pipeline.build_trainer(cfg, device, loggers, callbacks, run_dir)
        main_process = trainer.is_global_zero
        with watch("train"):
            module = pipeline.fit(cfg, model, datamodule, trainer)
        facts["train_loss"] = results.loss_summary(module.loss_history())
        if not main_process:
            return float("nan")

        with watch("eval"):
            model.to(device)
            evaluation = evaluate_generation(model, tokenizer, datamodule.test_examples, cfg.task.eval, cfg.trainer.eval_limit, device)
        facts["metrics"], facts["eval_samples"] = evaluation["metrics"], evaluation["samples"]
        facts["exported"] = pipeline.export_adapter(cfg, model, run_dir)
    except BaseException as exc:  # the result file records the failure; the error still propagates
        status, error = "failed", "".join(traceback.format_exception_only(type(exc), exc)).strip()
        log.error("run failed: %s\n%s", error, traceback.format_exc())
        raise
    finally:
        facts["telemetry"] = pipeline.telemetry_summary(callbacks)
        pipeline.finish_telemetry(loggers, failed=status != "ok", summary=facts["telemetry"])
        if main_process:
            result = {
                "method": cfg.method.name,
                "task": cfg.task.name,
                "model": cfg.model.name,
                "seed": cfg.seed,
                "rank": cfg.rank,
                "alpha": cfg.alpha,
                "learning_rate": cfg.optim.lr,
                "experiment": cfg.experiment_name,
                "config": OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
                "overrides": overrides if overrides is not None else hydra_overrides(),
                "command": results.command_line(),
                "wall_time_s": {**{k: round(v, 3) for k, v in watch.seconds.items()}, "total": round(time.perf_counter() - watch.started, 3)},
                "peak_memory_bytes": pipeline.peak_memory_bytes(device),
                "git": results.git_state(),
                "versions": results.package_versions(),
                "status": status,
                "error": error,
                "created": created,
                "run_dir": str(run_dir),
                **facts,
            }
            paths = results.write_result(result, run_dir, Path(cfg.paths.results_dir))
            log.info("result written to %s", ", ".join(map(str, paths)))
    return float(facts["metrics"][cfg.task.eval.primary_metric])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return train(cfg)


if __name__ == "__main__":
    main()
