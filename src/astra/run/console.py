"""The console is part of the interface: progress bars, a few INFO lines per phase, a closing summary block.

Known third-party noise (Lightning's tips, lm-eval's metric notes, transformers' and datasets' progress chatter) is
filtered at the entry; ``hydra.verbose=true`` or ``ASTRA_VERBOSE=1`` brings all of it back. This project's own calls
use the current APIs, so nothing of ours needs filtering.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from astra.run.learning_rate import learning_rate_source

log = logging.getLogger("run")

VERBOSE_ENV = "ASTRA_VERBOSE"
# (category, message regex) of warnings raised inside third-party code on paths this project uses as documented.
THIRD_PARTY_WARNINGS = (
    (Warning, r".*does not have many workers.*"),  # Lightning: num_workers=0 is deliberate (tiny CPU batches)
    (Warning, r".*The number of training batches .* is smaller than the logging interval.*"),
    (Warning, r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*"),
    (Warning, r".*GPU available but not used.*"),
    (Warning, r".*torch.jit.*"),
    (FutureWarning, r".*"),
    (DeprecationWarning, r".*"),
    (UserWarning, r".*TypedStorage is deprecated.*"),
)
# Loggers of libraries whose INFO lines repeat what the summary says, or say nothing to a reader of one run.
CHATTY_LOGGERS = {
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,  # "GPU available: False", "TPU available", ...
    "lightning.pytorch.accelerators.cuda": logging.WARNING,
    "lightning.fabric.utilities.seed": logging.WARNING,
    "lightning.pytorch.callbacks.model_summary": logging.WARNING,
    "lm-eval": logging.ERROR,
    "lm_eval": logging.ERROR,
    "datasets": logging.ERROR,
    "transformers": logging.ERROR,
    "httpx": logging.WARNING,
}


def verbose_requested(argv: list[str]) -> bool:
    flag = os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes"}
    return flag or any(arg.startswith("hydra.verbose=") and arg.split("=", 1)[1] not in ("", "false", "[]")
                       for arg in argv)  # fmt: skip


def quiet_third_party(argv: list[str]) -> bool:
    """Filter the known third-party warnings and chatty loggers unless verbose output was asked for. Returns whether
    filtering is on."""
    if verbose_requested(argv):
        return False
    for category, message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # "Generating test split" for a local file
    os.environ.setdefault("WANDB_SILENT", "true")  # W&B's banner and run history: the summary block says it
    for name, level in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    return True


def phase_line(name: str, data: dict[str, Any], seconds: float) -> None:
    log.info("%s: %d training rows, %d validation, %d test (%.1f s)", name, data["train_rows"], data["val_rows"],
             data["test_rows"], seconds)  # fmt: skip


def init_line(cfg: Any, parameters: dict[str, int], seconds: float) -> None:
    trainable, total = parameters["trainable"], parameters["total"]
    log.info("init: %s, %s of %s parameters trainable (%.2f%%) (%.1f s)", cfg.method.name, f"{trainable:,}",
             f"{total:,}", 100 * trainable / max(total, 1), seconds)  # fmt: skip


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def summary_lines(record: Any) -> list[str]:
    """The closing block: status, what ran, the primary metric with its item count, forgetting, wall time per phase,
    where the result file is."""
    cfg, facts = record.cfg, record.facts
    primary = cfg.task.eval.primary_metric
    lines = ["── run summary " + "─" * 45, f"status      {record.status}"]
    if record.error:
        lines.append(f"error       {record.error.splitlines()[-1][:200]}")
    lines.append(f"method      {cfg.method.name:<12} task {cfg.task.name:<14} model {cfg.model.name}")
    value = facts.get("metrics", {}).get(primary)
    if value is not None:
        items = facts.get("items") or {}
        count = len(items.get("ids", [])) or (facts.get("data") or {}).get("test_rows")
        lines.append(f"{primary:<11} {value:.3f}" + (f" on {count} items" if count else ""))
    length = facts.get("training_length")
    if length and cfg.method.get("trains", True):
        raised = f" ({length['max_epochs']} epochs: model.min_train_steps)" if length.get("raised_from") else ""
        planned, done = length["optimizer_steps"], getattr(getattr(record, "trainer", None), "global_step", None)
        steps = f"{planned}" if done in (None, planned) else f"{done} of {planned}"
        lines.append(f"training    {steps} optimizer steps{raised} at lr {float(cfg.optim.lr):.3g}"
                     f" ({learning_rate_source(cfg)})")
    increase = (facts.get("forgetting") or {}).get("increase")
    if increase is not None:
        lines.append(f"forgetting  {increase:+.4f} (generic-text loss increase, nats per token)")
    for warning in facts.get("warnings") or []:
        lines.append(f"warning     {warning}")
    times = [f"{name} {_seconds(value)}" for name, value in record.watch.seconds.items()]
    times.append(f"total {_seconds(time.perf_counter() - record.watch.started)}")
    lines.append("wall time   " + " · ".join(times))
    if record.written:
        lines.append(f"result      {record.written[-1]}")
    return lines


def summary(record: Any) -> None:
    print("\n".join(summary_lines(record)), flush=True)
