"""Wiring helpers for run.py: build the callbacks from config, hand them run info, collect the summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl


def instantiate_callbacks(callbacks_cfg: Any) -> list[pl.Callback]:
    """Instantiate a ``conf/callbacks`` node (a mapping of name -> Hydra ``_target_`` node; None or empty
    gives ``[]``; entries set to null are skipped), in the order given."""
    if not callbacks_cfg:
        return []
    from hydra.utils import instantiate

    out = []
    for name, node in callbacks_cfg.items():
        if node is None:
            continue
        if "_target_" not in node:
            raise ValueError(f"callbacks.{name} has no _target_: only some of its fields ({sorted(node)}) are set, by an "
                             "experiment or an override, and the callbacks group in use (callbacks=none?) does not "
                             "define it; use callbacks=default or give the node a _target_")  # fmt: skip
        out.append(instantiate(node))
    return out


def attach_run_info(
    callbacks: Iterable[Any],
    *,
    init_time_s: float | None = None,
    init_report: Mapping[str, Any] | None = None,
) -> None:
    """Give the callbacks what only run.py knows: the init time (seconds) and the init method's report
    (its ``_moment_eigenvalues`` become ``rank/moment/...`` at step 0). Call before ``trainer.fit``."""
    for callback in callbacks:
        if hasattr(callback, "set_init_facts"):
            callback.set_init_facts(init_report=init_report, init_seconds=init_time_s)


def collect_summary(callbacks: Iterable[Any]) -> dict[str, Any]:
    """Merge ``callback.summary()`` of every callback that has one (later callbacks win on key clashes).

    With the default callbacks the keys include ``final_train_loss``, ``final_train_loss_mean10``,
    ``final_val_loss``, ``best_val_loss``, ``final_lr``, ``grad_norm_mean_first100``, ``grad_norm_mean``,
    ``final_effective_rank_mean``, ``final_stable_rank_mean``, ``init_effective_rank_mean``,
    ``moment_effective_rank_mean``, ``tokens_per_s``, ``peak_memory_mb``, ``train_time_s``,
    ``trainable_params``, ``total_params``, ``init_time_s`` (each only when measured).
    """
    out: dict[str, Any] = {}
    for callback in callbacks:
        summary = getattr(callback, "summary", None)
        if callable(summary):
            out.update(summary())
    return out


def downsample(points: list[tuple[int, float]], max_points: int = 1000) -> list[tuple[int, float]]:
    """At most ``max_points`` of ``points``, evenly spaced by position, the first and the last always kept."""
    if len(points) <= max_points:
        return list(points)
    last = len(points) - 1
    picks = sorted({round(k * last / (max_points - 1)) for k in range(max_points)})
    return [points[i] for i in picks]


def collect_series(callbacks: Iterable[Any], max_points: int = 1000) -> dict[str, dict[str, list]]:
    """``{name: {"step": [...], "value": [...]}}`` of every callback's recorded series (``grad/norm``, ``train/lr``,
    ``rank/eff/mean``, ...), each downsampled to at most ``max_points`` (first and last kept)."""
    out: dict[str, dict[str, list]] = {}
    for callback in callbacks:
        for name, points in (getattr(callback, "series", None) or {}).items():
            kept = downsample(sorted(points), max_points)
            out[name] = {"step": [step for step, _ in kept], "value": [value for _, value in kept]}
    return out


def default_callbacks(**overrides: Mapping[str, Any]) -> list[pl.Callback]:
    """The callbacks of ``conf/callbacks/default.yaml`` with default arguments, without Hydra
    (``overrides``: per-callback keyword arguments, keyed ``lr``, ``loss``, ``grad_norm``,
    ``effective_rank``, ``run_facts``)."""
    from astra.telemetry.grad_norm import GradNormMonitor
    from astra.telemetry.loss import LossMonitor, LRMonitor
    from astra.telemetry.rank import EffectiveRankMonitor
    from astra.telemetry.run_facts import RunFactsMonitor

    classes = {
        "lr": LRMonitor,
        "loss": LossMonitor,
        "grad_norm": GradNormMonitor,
        "effective_rank": EffectiveRankMonitor,
        "run_facts": RunFactsMonitor,
    }
    unknown = set(overrides) - set(classes)
    if unknown:
        raise ValueError(f"unknown callbacks {sorted(unknown)}; known: {sorted(classes)}")
    return [cls(**dict(overrides.get(name, {}))) for name, cls in classes.items()]
