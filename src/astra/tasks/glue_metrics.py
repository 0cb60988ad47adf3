"""GLUE's metrics from torchmetrics' functional API (accuracy by exact count): F1 of the positive class (MRPC, QQP), Matthews
correlation (CoLA), Pearson and Spearman correlation (STS-B). MNLI reports matched and mismatched dev accuracy and,
as ``accuracy``, their mean (the single number tables use).

Undefined correlations (a constant prediction or reference) are NaN, written as null in the result file with the
field named in ``non_finite``, never a made-up 0; torchmetrics' MCC is already 0 in that case, as its definition
sets it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics.functional import matthews_corrcoef, pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import binary_f1_score

from astra.tasks.glue_data import GlueTaskSpec, task_row


def _tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(list(values), dtype=dtype)


def _correlation(function, predictions: torch.Tensor, references: torch.Tensor) -> float:
    if len(predictions) < 2 or predictions.std() == 0 or references.std() == 0:
        return math.nan
    return float(function(predictions, references))


def compute_glue_metrics(task: str | GlueTaskSpec, predictions: Any, references: Any) -> dict[str, float]:
    """The task's metrics (see ``GLUE_TASKS[task].metrics``) plus ``n_eval``."""
    spec = task_row(task)
    if len(predictions) != len(references) or not len(references):
        raise ValueError(f"{spec.name}: {len(predictions)} predictions for {len(references)} references")
    if spec.is_regression:
        preds, refs = _tensor(predictions, torch.float64), _tensor(references, torch.float64)
        return {"pearson": _correlation(pearson_corrcoef, preds, refs),
                "spearman": _correlation(spearman_corrcoef, preds, refs), "n_eval": float(len(refs))}  # fmt: skip
    preds, refs = _tensor(predictions, torch.long), _tensor(references, torch.long)
    # Accuracy as an exact count (torchmetrics returns float32: 3/5 would read 0.6000000238 in the result file).
    metrics = {"accuracy": int((preds == refs).sum()) / len(refs)}
    if "f1" in spec.metrics:
        metrics["f1"] = float(binary_f1_score(preds, refs))
    if "mcc" in spec.metrics:
        metrics["mcc"] = float(matthews_corrcoef(preds, refs, task="binary"))
    return {**metrics, "n_eval": float(len(refs))}


def compute_mnli_metrics(matched_predictions: Any, matched_references: Any, mismatched_predictions: Any,
                         mismatched_references: Any) -> dict[str, float]:  # fmt: skip
    return compute_dev_metrics("mnli", {"dev_matched": (matched_predictions, matched_references),
                                        "dev_mismatched": (mismatched_predictions, mismatched_references)})  # fmt: skip


def compute_dev_metrics(task: str | GlueTaskSpec, scored: dict[str, tuple[Any, Any]]) -> dict[str, float]:
    """Metrics over the task's dev splits (``scored[split] = (predictions, references)``). One split: its metrics.
    Several (MNLI matched and mismatched): ``accuracy_<split without dev_>`` each and, as ``accuracy``, their mean
    (the single number tables use)."""
    spec = task_row(task)
    if len(spec.dev_splits) == 1:
        return compute_glue_metrics(spec, *scored[spec.dev_splits[0]])
    each = {split: compute_glue_metrics(spec, *scored[split]) for split in spec.dev_splits}
    metrics = {f"accuracy_{split.removeprefix('dev_')}": each[split]["accuracy"] for split in spec.dev_splits}
    return {**metrics, "accuracy": sum(metrics.values()) / len(metrics),
            "n_eval": sum(m["n_eval"] for m in each.values())}  # fmt: skip
