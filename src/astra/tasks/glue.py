"""The GLUE family: eight understanding tasks on an encoder with a sequence-classification (or regression) head.

Rows are sentence pairs (or single sentences) with a label, read from the GLUE distribution's TSV files, the
Hub dataset ``nyu-mll/glue`` or the shipped samples (``glue_data``). Training is the model's own loss on
``AutoModelForSequenceClassification`` (cross-entropy; mean squared error for STS-B), with PEFT's ``SEQ_CLS``
task type so the new classifier head trains in full beside the adapters. GLUE's test labels are hidden, so a
task is scored on its dev set(s), as papers report; MNLI reports matched and mismatched dev. Metrics come from
torchmetrics (``glue_metrics``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from astra.data.examples import Example
from astra.tasks.base import EvalSettings, TaskFamily, item_outcomes, write_records
from astra.tasks.glue_data import GLUE_TASKS, GlueTaskSpec, glue_spec, read_glue_tsv, read_hub_row
from astra.tasks.glue_metrics import compute_dev_metrics


def task_spec(task_cfg: Any) -> GlueTaskSpec:
    """The task's row of ``GLUE_TASKS``, or the one its YAML states under ``task.benchmark_facts.<benchmark>``."""
    benchmark = task_cfg.benchmark
    facts = (task_cfg.get("benchmark_facts") or {}).get(benchmark)
    if facts is not None:
        try:
            return glue_spec(benchmark, **dict(facts))
        except TypeError as error:  # a missing or unknown key
            raise ValueError(f"task.benchmark_facts.{benchmark}: {error} (the arguments of glue_data.glue_spec)") from None
    if benchmark not in GLUE_TASKS:
        raise ValueError(f"task.benchmark={benchmark!r} is not a GLUE task; expected one of {sorted(GLUE_TASKS)} "
                         f"or its facts under task.benchmark_facts.{benchmark}")  # fmt: skip
    return GLUE_TASKS[benchmark]


class GlueFamily(TaskFamily):
    name = "glue"
    head = "sequence_classification"

    def model_head(self, task_cfg: Any) -> dict[str, Any]:
        spec = task_spec(task_cfg)
        problem = "regression" if spec.is_regression else "single_label_classification"
        return {"kind": self.head, "num_labels": spec.num_labels, "problem_type": problem}

    def eval_splits(self, task_cfg: Any) -> list[str]:
        return list(task_spec(task_cfg).dev_splits)

    def read_file(self, path: Path, task_cfg: Any = None):
        if path.suffix != ".tsv":
            return None
        return read_glue_tsv(task_spec(task_cfg), path)

    def row_formats(self):
        return {"glue": self._format}

    def _format(self, row: dict, split: str, task_cfg: Any) -> Example:
        if "text_a" not in row:  # a nyu-mll/glue Hub row (task.source=hub)
            self._hub_rows = getattr(self, "_hub_rows", 0) + 1
            row = read_hub_row(task_spec(task_cfg), row, self._hub_rows)
        return Example(row["text_a"], row.get("text_b") or "", row["label"], meta={"split": split, "idx": row.get("idx")})

    def instruction_and_output(self, row: dict, task_cfg: Any) -> tuple[str, str]:
        raise ValueError(
            "method.calibration.text=reference is the Astra reference code's instruction text; GLUE rows have no "
            "instruction: use method.calibration.text=train (the sentence pairs as the model sees them)"
        )

    def tokenize(self, example: Example, tokenizer: Any, max_length: int) -> dict:
        """The pair as the tokenizer frames it (``[CLS] a [SEP] b [SEP]``), truncated longest-first."""
        encoded = tokenizer(example.prompt, example.answer or None, truncation=True, max_length=max_length)
        feature = {"input_ids": encoded["input_ids"], "labels": example.reference}
        if "token_type_ids" in encoded:
            feature["token_type_ids"] = encoded["token_type_ids"]
        return feature

    def collate(self, features: list[dict], pad_token_id: int, pad_to: int | None = None) -> dict:
        """Right padding; labels a long tensor of class indices, or float scores for regression (STS-B)."""
        length = pad_to or max(len(feature["input_ids"]) for feature in features)
        batch = {
            "input_ids": torch.full((len(features), length), pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), length), dtype=torch.long),
        }
        with_segments = "token_type_ids" in features[0]
        if with_segments:
            batch["token_type_ids"] = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(feature["input_ids"])
            batch["attention_mask"][row, :n] = 1
            if with_segments:
                batch["token_type_ids"][row, :n] = torch.tensor(feature["token_type_ids"])
        labels = [feature["labels"] for feature in features]
        regression = any(isinstance(label, float) for label in labels)
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
        return batch

    @torch.no_grad()
    def predict(self, model, tokenizer, examples: list[Example], batch_size: int, device: torch.device,
                max_length: int, regression: bool) -> list:  # fmt: skip
        """Class indices (or regression scores) for ``examples``, in order; the model's mode is restored."""
        was_training = model.training
        model.eval()
        features = [self.tokenize(example, tokenizer, max_length) for example in examples]
        # Batches of similar length pad little (2x faster on QNLI dev); predictions go back to the input order.
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        predictions: list = [None] * len(features)
        try:
            for start in tqdm(range(0, len(order), batch_size), desc="classify", leave=False):
                chunk = order[start : start + batch_size]
                batch = self.collate([features[i] for i in chunk], tokenizer.pad_token_id)
                batch.pop("labels")
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
                values = logits[:, 0] if regression else logits.argmax(-1)
                for i, value in zip(chunk, values.cpu().tolist(), strict=True):
                    predictions[i] = value
        finally:
            model.train(was_training)
        return predictions

    def evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings) -> dict:
        spec = task_spec(task_cfg)
        by_split: dict[str, list[Example]] = {split: [] for split in spec.dev_splits}
        for example in examples:
            by_split[example.meta["split"]].append(example)
        if settings.limit:  # per dev split, so MNLI's mismatched set is never cut away entirely
            by_split = {split: rows[: settings.limit] for split, rows in by_split.items()}
        records, scored = [], {}
        for split, rows in by_split.items():
            predictions = self.predict(model, tokenizer, rows, int(task_cfg.eval.batch_size), settings.device,
                                       int(task_cfg.max_length), spec.is_regression)  # fmt: skip
            references = [example.reference for example in rows]
            scored[split] = (predictions, references)
            for example, predicted in zip(rows, predictions, strict=True):
                record = {"split": split, "idx": example.meta.get("idx"), "label": example.reference, "prediction": predicted}
                if not spec.is_regression:
                    record["correct"] = predicted == example.reference
                records.append(record)
        metrics = compute_dev_metrics(spec, scored)
        write_records(settings.records_path, records)
        evaluation = {"metrics": {k: float(v) for k, v in metrics.items()}, "samples": records[:3],
                      "items": item_outcomes(records)}  # fmt: skip
        if not spec.is_regression:  # how often each class was predicted: a collapsed classifier predicts one
            evaluation["prediction_counts"] = dict(Counter(str(record["prediction"]) for record in records))
        return evaluation
