"""Where a data-driven init's calibration rows come from (``calibration_source``, the calib_source ablation).

- ``task`` (default): the run's own training rows, chosen with the seed (``TaskDataModule.calibration_dataloader``);
- ``task:<name>``: another task's training rows (``conf/task/<name>.yaml``, read from its default source), formatted
  by that task's family and padded to this run's ``task.max_length``; both tasks must train the same head;
- ``generic_text``: consecutive windows of the generic text the forgetting probe reads (``forgetting.source``:
  the shipped prose, a file or wikitext-2), BOS first, labels = the tokens (a language-model loss for LoRA-GA);
  causal-LM tasks only.

The calibration cache key hashes the batches' content, so each source caches separately.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from astra.data.datamodule import TaskDataModule, TokenizedExamples

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
FIXED = ("task", "generic_text")


def describe_choices() -> str:
    tasks = sorted(path.stem for path in (CONF_DIR / "task").glob("*.yaml"))
    return f"'task', 'generic_text' or 'task:<name>' with <name> one of {tasks}"


def calibration_loader(cfg: Any, datamodule: TaskDataModule, family: Any, family_of: Callable[[str], Any]) -> DataLoader:
    """The calibration loader for ``cfg.method.calibration`` from ``cfg.calibration_source``. ``family`` is the run's
    task family; ``family_of(name)`` builds another task's family (``task:<name>``)."""
    calibration = cfg.method.calibration
    n_samples, batch_size = int(calibration.n_samples), int(calibration.batch_size)
    text = calibration.get("text", "train")
    source = str(cfg.get("calibration_source") or "task")
    if source == "task":
        return datamodule.calibration_dataloader(n_samples, batch_size, text)
    if source == "generic_text":
        return generic_text_loader(cfg, datamodule, family, n_samples, batch_size)
    if source.startswith("task:"):
        return other_task_loader(source.removeprefix("task:"), datamodule, family, family_of, n_samples, batch_size, text)
    raise ValueError(f"calibration_source={source!r} is not valid; expected {describe_choices()}")


def other_task_loader(name: str, datamodule: TaskDataModule, family: Any, family_of: Callable[[str], Any], n_samples: int,
                      batch_size: int, text: str) -> DataLoader:
    path = CONF_DIR / "task" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"calibration_source=task:{name}: no task config {path}; expected {describe_choices()}")
    other_cfg = OmegaConf.load(path)
    other = TaskDataModule(other_cfg, family_of(other_cfg.family), datamodule.tokenizer, batch_size=batch_size,
                           seed=datamodule.seed)
    if other.family.head != family.head:
        raise ValueError(
            f"calibration_source=task:{name}: that task trains a {other.family.head} head, this run a "
            f"{family.head} head; calibrate on a task of the same kind"
        )
    other.max_length = datamodule.max_length  # the statistics see rows shaped as this run's training rows
    return other.calibration_dataloader(n_samples, batch_size, text)


def generic_text_loader(cfg: Any, datamodule: TaskDataModule, family: Any, n_samples: int, batch_size: int) -> DataLoader:
    from astra.data.generic_text import read_text, token_windows

    if family.head != "causal_lm":
        raise ValueError(
            f"calibration_source=generic_text needs a causal-LM task; task {cfg.task.name} trains a "
            f"{family.head} head (its calibration needs labelled rows): use 'task' or 'task:<name>'"
        )
    text, origin = read_text(cfg.forgetting)
    windows = token_windows(text, datamodule.tokenizer, datamodule.max_length, n_samples)
    if windows.shape[0] < n_samples:
        raise ValueError(
            f"calibration_source=generic_text: {origin} gives only {windows.shape[0]} windows of "
            f"{datamodule.max_length} tokens, fewer than n_samples={n_samples}; use a longer text "
            "(forgetting.source=file or hub) or fewer samples"
        )
    features = [{"input_ids": row.tolist(), "labels": row.tolist()} for row in windows]
    dataset = TokenizedExamples(features, list(range(len(features))))
    collate = partial(family.collate, pad_token_id=datamodule.tokenizer.pad_token_id, pad_to=datamodule.max_length)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
