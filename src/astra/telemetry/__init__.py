"""Training telemetry: loss/lr, gradient norms, effective rank, run facts, and their loggers.

See :mod:`astra.callbacks` for the public facade used by run.py and ``conf/callbacks``.
"""

from astra.telemetry.base import BufferedMetricsCallback
from astra.telemetry.grad_norm import GradNormMonitor
from astra.telemetry.loss import LossMonitor, LRMonitor
from astra.telemetry.naming import module_type, param_type_and_factor, short_layer_name, split_param_name
from astra.telemetry.rank import EffectiveRankMonitor, adapter_spectra, moment_rank_metrics, rank_metrics
from astra.telemetry.run_facts import RunFactsMonitor, count_tokens, parameter_counts, peak_memory_mb
from astra.telemetry.summary import (
    attach_run_info,
    collect_series,
    collect_summary,
    default_callbacks,
    instantiate_callbacks,
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
    "collect_series",
    "collect_summary",
    "count_tokens",
    "default_callbacks",
    "instantiate_callbacks",
    "moment_rank_metrics",
    "module_type",
    "param_type_and_factor",
    "parameter_counts",
    "peak_memory_mb",
    "rank_metrics",
    "short_layer_name",
    "split_param_name",
]
