"""Warnings for a run that finished but did not learn: a classifier that ends predicting one class for every item, or
a training loss that ends above where it started. The run did what was asked, so it stays ``ok``; the warning goes
into the result file (``warnings``) and the closing summary, naming the rate and where to change it.
"""

from __future__ import annotations

from typing import Any

# The loss is compared as the mean of the first and the last LOSS_WINDOW micro-batch losses, so one noisy step never
# raises the warning; a shorter run has too few steps to judge.
LOSS_WINDOW = 10
MIN_STEPS_TO_JUDGE = 2 * LOSS_WINDOW
CLIMB_MARGIN = 0.01  # relative: a loss that stays flat (0.694 -> 0.6943 on a two-class task) has not climbed


def rate_hint(learning_rate: dict[str, Any]) -> str:
    """Where the rate came from and how to change it, for a warning's second half."""
    value = learning_rate.get("value")
    return (f"the learning rate was {value:.3g} ({learning_rate.get('source', 'optim.lr')}); usually the rate is too "
            "high for this method (or the run too short): set optim.lr=<rate>, or see the method's lr_scale "
            "(docs/methods.md#learning-rates)")


def single_class_warning(prediction_counts: dict[str, int] | None, learning_rate: dict[str, Any]) -> str | None:
    """A classifier whose every test prediction is one class has collapsed (typically to the majority class)."""
    if not prediction_counts:
        return None
    predicted = [label for label, count in prediction_counts.items() if count > 0]
    total = sum(prediction_counts.values())
    if len(predicted) != 1 or total < 2:
        return None
    return (f"collapse: every one of the {total} test items was predicted as class {predicted[0]!r}; "
            + rate_hint(learning_rate))


def climbing_loss_warning(train_loss: dict[str, Any], learning_rate: dict[str, Any]) -> str | None:
    """A training loss whose last steps average above its first steps."""
    per_step = train_loss.get("per_step") or []
    if len(per_step) < MIN_STEPS_TO_JUDGE:
        return None
    window = LOSS_WINDOW
    first = sum(per_step[:window]) / window
    last = sum(per_step[-window:]) / window
    if not last > first * (1 + CLIMB_MARGIN):
        return None
    return (f"loss climbed: the training loss ended above where it started (mean of the first {window} steps "
            f"{first:.4g}, of the last {window} {last:.4g}); " + rate_hint(learning_rate))


def collapse_warnings(evaluation: dict[str, Any], train_loss: dict[str, Any], learning_rate: dict[str, Any],
                      trained: bool) -> list[str]:  # fmt: skip
    """Every warning that applies to a finished run (none for an untrained one: it learnt nothing by design)."""
    if not trained:
        return []
    found = [single_class_warning(evaluation.get("prediction_counts"), learning_rate),
             climbing_loss_warning(train_loss, learning_rate)]  # fmt: skip
    return [warning for warning in found if warning]
