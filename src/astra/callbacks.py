"""Public facade of the training telemetry (implemented in :mod:`astra.telemetry`) and its loggers.

run.py wiring::

    callbacks = instantiate_callbacks(cfg.callbacks)          # conf/callbacks/{default,none}.yaml
    attach_run_info(callbacks, init_time_s=init_seconds, init_report=report)
    # (equivalently: callback.set_init_facts(init_report=report, init_seconds=init_seconds) on each)
    with logger_session(cfg.logger, run_dir, f"{method}-{task}-{seed}", cfg.experiment_name,
                        OmegaConf.to_container(cfg, resolve=True)) as (loggers, summary):
        trainer = pl.Trainer(..., logger=loggers or False, callbacks=callbacks, log_every_n_steps=1)
        trainer.fit(module, datamodule)
        summary.update(collect_summary(callbacks))             # also goes into the result file

Metric names: ``train/`` (lr, loss_step), ``val/``, ``grad/``, ``rank/``, ``run/``; the LightningModule itself
logs ``train/loss`` (every step) and ``val/loss`` (``LossMonitor`` reads ``val/loss`` from
``trainer.callback_metrics`` for the summary).
"""

from astra import telemetry
from astra.loggers import build_loggers, finish_loggers, log_summary, logger_session
from astra.telemetry import *  # noqa: F403 - this module is the public facade of the telemetry package

__all__ = [*telemetry.__all__, "build_loggers", "finish_loggers", "log_summary", "logger_session"]
