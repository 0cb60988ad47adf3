"""The Lightning data module: formatting, tokenisation with prompt-masked labels, padding-aware batches."""

from __future__ import annotations

import json
import logging
import os
import random
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from astra.data.batches import IGNORE_INDEX
from astra.data.examples import Example
from astra.data.resumable import ResumableRandomSampler
from astra.data.sources import SplitRows, load_split, require_file

log = logging.getLogger(__name__)

EMPTY_SPLIT_CONSEQUENCE = {
    "train": "training needs at least one row",
    "test": "evaluation would report a score from 0 examples",
}


class TokenizedExamples(Dataset):
    """Tokenised training rows; ``ids[i]`` is the row's index in the source split (for provenance)."""

    def __init__(self, features: list[dict], ids: list[int]):
        self.features, self.ids = features, ids

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict:
        return self.features[index]


def select_rows(loaded: SplitRows, row_ids: Any, split: str) -> SplitRows:
    """``task.row_ids``: ``{file: <json>, <split>: <key>}`` keeps, for each split it names, the rows of the loaded file
    at the 0-based positions listed under ``<key>`` in the JSON file, in that order. So a published split of one
    file (train / validation / test ids of QNLI's dev set) ships as ids, not text."""
    if not row_ids or not row_ids.get(split):
        return loaded
    path, key = Path(os.path.expanduser(str(row_ids.get("file") or ""))), row_ids[split]
    require_file(path, "task.row_ids.file (a JSON object of id lists)")
    lists = json.loads(path.read_text(encoding="utf-8"))
    if key not in lists:
        raise ValueError(f"task.row_ids.{split}={key!r} is not a key of {path}; its keys: {sorted(lists)}")
    ids = lists[key]
    bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(loaded.rows)]
    if bad:
        raise ValueError(f"{path} [{key!r}]: ids {bad[:5]} are not row positions of {loaded.origin} (0..{len(loaded.rows) - 1})")
    return SplitRows([loaded.rows[i] for i in ids], [loaded.locations[i] for i in ids], f"{loaded.origin} rows {path}[{key!r}]")


def has_target(feature: dict) -> bool:
    """Whether a tokenised training row has something to learn: a label token (causal LM) or a label (GLUE)."""
    labels = feature["labels"]
    return any(label != IGNORE_INDEX for label in labels) if isinstance(labels, list) else True


def _reason(error: Exception) -> str:
    message = error.args[0] if error.args else ""  # str(KeyError(...)) would wrap the message in quotes
    if isinstance(error, (KeyError, ValueError)):
        return str(message)
    return f"{type(error).__name__}: {message}"  # a wrong-typed field: the type is part of the story


class TaskDataModule(pl.LightningDataModule):
    """Train/validation/calibration loaders for one task; test examples are kept as text for generation."""

    def __init__(self, task_cfg: Any, family: Any, tokenizer, batch_size: int, seed: int, val_size: int = 0,
                 num_workers: int = 0):
        super().__init__()
        # The task family (astra.tasks) reads, formats, tokenises and batches rows; the runner builds it once.
        self.task_cfg, self.family, self.tokenizer = task_cfg, family, tokenizer
        self.batch_size, self.seed, self.val_size, self.num_workers = batch_size, seed, val_size, num_workers
        self.max_length = int(task_cfg.max_length)
        self.train_rows: list[dict] = []  # raw rows, for calibration text other than the training text
        self.rows_without_target = 0  # training rows left out: their answer lies beyond max_length
        self.train_set: TokenizedExamples | None = None
        self.val_set: TokenizedExamples | None = None
        self.test_examples: list[Example] = []
        self._resume_position: tuple[int, int] | None = None  # (epoch, batches done), from a checkpoint

    def _load_examples(self, split: str) -> list[Example]:
        """The split's rows, formatted by the task's family; an error names the file and line of the row at fault."""
        loaded = load_split(self.task_cfg, split, reader=lambda path: self.family.read_file(path, self.task_cfg))
        loaded = select_rows(loaded, self.task_cfg.get("row_ids"), split)
        limit = self.task_cfg.get("train_limit") if split == "train" else None
        if limit:  # the first N training rows, as the reference code takes the first 100k of each training set
            loaded = type(loaded)(loaded.rows[:limit], loaded.locations[:limit], loaded.origin)
        if split == "train":
            self.train_rows = loaded.rows
        if not loaded.rows:
            consequence = EMPTY_SPLIT_CONSEQUENCE.get(split, EMPTY_SPLIT_CONSEQUENCE["test"])
            raise ValueError(
                f"task {self.task_cfg.name}: the {split} split ({loaded.origin}) has no rows; {consequence}. "
                f"Expected at least one row with the fields the {self.task_cfg.format!r} row format reads"
            )
        examples = []
        for row, location in zip(loaded.rows, loaded.locations, strict=True):
            try:
                examples.append(self.family.format_row(row, split, self.task_cfg))
            except (KeyError, ValueError, TypeError, AttributeError) as error:  # e.g. a number where text belongs
                raise ValueError(f"task {self.task_cfg.name}, {split} {location}: {_reason(error)}") from None
        return examples

    def _resolve_val_size(self, n_rows: int) -> int:
        """``task.validation_size`` when the task names one (a fraction of the training rows below 1, else a row
        count; GLUE carves its learning-rate-selection split this way), else ``trainer.val_size``."""
        size = self.task_cfg.get("validation_size")
        if size is None:
            return self.val_size
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0:
            raise ValueError(f"task.validation_size={size!r} is not valid: expected a fraction in [0, 1) or a row count")
        return int(size) if size >= 1 else int(round(size * n_rows))

    def _check_val_size(self, n_rows: int) -> None:
        if not 0 <= self.val_size < n_rows:
            raise ValueError(
                f"trainer.val_size={self.val_size} must be in [0, {n_rows - 1}]: task {self.task_cfg.name} has "
                f"{n_rows} training rows and at least one must remain for training"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_examples = self._load_examples("train")
        features = [self.family.tokenize(example, self.tokenizer, self.max_length) for example in train_examples]
        # A row whose answer lies entirely beyond task.max_length has no token to learn from; a batch of only such
        # rows would make the loss 0/0 = NaN. Such rows are left out, counted and reported (result: data).
        kept = [i for i, feature in enumerate(features) if has_target(feature)]
        self.rows_without_target = len(features) - len(kept)
        if not kept:
            raise ValueError(
                f"task {self.task_cfg.name}: every one of the {len(features)} training rows has its answer cut off by "
                f"task.max_length={self.max_length} (the prompt alone fills it); raise task.max_length"
            )
        if self.rows_without_target:
            log.warning("task %s: %d of %d training rows have no answer token within task.max_length=%d; left out",
                        self.task_cfg.name, self.rows_without_target, len(features), self.max_length)  # fmt: skip
        self.val_size = self._resolve_val_size(len(kept))
        self._check_val_size(len(kept))
        order = list(kept)
        random.Random(self.seed).shuffle(order)
        val_ids, train_ids = sorted(order[: self.val_size]), sorted(order[self.val_size :])
        self.train_set = TokenizedExamples([features[i] for i in train_ids], train_ids)
        self.val_set = TokenizedExamples([features[i] for i in val_ids], val_ids) if val_ids else None
        # Evaluation splits in order (GLUE's MNLI: matched then mismatched dev); each example knows its split.
        self.test_examples = [example for split in self.family.eval_splits(self.task_cfg)
                              for example in self._load_examples(split)]  # fmt: skip

    def _loader(self, dataset: Dataset, batch_size: int, pad_to: int | None = None, sampler=None) -> DataLoader:
        """In order, or in ``sampler``'s order (training)."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=partial(self.family.collate, pad_token_id=self.tokenizer.pad_token_id, pad_to=pad_to),
        )

    def train_dataloader(self) -> DataLoader:
        # The order of epoch e depends on (seed, e) only, so a resumed run continues with the same batches.
        sampler = ResumableRandomSampler(len(self.train_set), self.seed)
        if self._resume_position is not None:
            epoch, batches_done = self._resume_position
            sampler.resume_at(epoch, batches_done * self.batch_size * self._world_size())
        return self._loader(self.train_set, self.batch_size, sampler=sampler)

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def state_dict(self) -> dict:
        """The data position saved in a checkpoint: the epoch and the batches of it already trained on."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        epoch = trainer.current_epoch
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # saved on the epoch's last batch: resume at the next epoch
            epoch, done = epoch + 1, 0
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["batches_done"]))

    def val_dataloader(self):
        return self._loader(self.val_set, self.batch_size) if self.val_set else []

    def calibration_dataloader(self, n_samples: int, batch_size: int, text: str = "train") -> DataLoader:
        """Exactly ``n_samples`` training rows chosen with the run's seed, every row padded to
        ``max_length`` as the reference code pads (so batch composition never changes statistics).
        The chosen source-row ids are at ``loader.dataset.ids``. ``text``: ``train`` (the rows as formatted for
        training) or ``reference`` (the Astra reference code's text: see astra.tasks.base)."""
        self.setup()
        available = len(self.train_set)
        if n_samples > available:
            raise ValueError(
                f"calibration asks for n_samples={n_samples} rows but task {self.task_cfg.name} has only "
                f"{available} training rows; lower method.calibration.n_samples or use more data"
            )
        picks = sorted(random.Random(self.seed + 1).sample(range(available), n_samples))
        ids = [self.train_set.ids[i] for i in picks]
        if text == "train":
            features = [self.train_set.features[i] for i in picks]
        else:
            examples = [self.family.calibration_example(self.train_rows[i], self.task_cfg, text) for i in ids]
            features = [self.family.tokenize(example, self.tokenizer, self.max_length) for example in examples]
        subset = TokenizedExamples(features, ids)
        return self._loader(subset, batch_size, pad_to=self.max_length)
