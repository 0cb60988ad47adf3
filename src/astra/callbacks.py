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

from astra.loggers import build_loggers, finish_loggers, log_summary, logger_session
from astra.telemetry import (
    BufferedMetricsCallback,
    EffectiveRankMonitor,
    GradNormMonitor,
    LossMonitor,
    LRMonitor,
    RunFactsMonitor,
    adapter_spectra,
    attach_run_info,
    collect_summary,
    count_tokens,
    default_callbacks,
    instantiate_callbacks,
    module_type,
    moment_rank_metrics,
    parameter_counts,
    peak_memory_mb,
    rank_metrics,
    short_layer_name,
)

__all__ = [
    "BufferedMetricsCallback",
    "EffectiveRankMonitor",
    "GradNormMonitor",
    "LRMonitor",
    "LossMonitor",
    "RunFactsMonitor",
    "adapter_spectra",
    "attach_run_info",
    "build_loggers",
    "collect_summary",
    "count_tokens",
    "default_callbacks",
    "finish_loggers",
    "instantiate_callbacks",
    "log_summary",
    "logger_session",
    "moment_rank_metrics",
    "module_type",
    "parameter_counts",
    "peak_memory_mb",
    "rank_metrics",
    "short_layer_name",
]
