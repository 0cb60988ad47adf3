"""The task seam: a task is one YAML in ``conf/task/``; its ``family`` (one module here) reads, formats and scores.

The pipeline asks the family named by ``task.family`` for three things and never branches on the task name:

- ``format_row(row, split, task_cfg) -> Example``: a raw data row of the ``train`` or ``test`` split as a
  prompt, the training target and the reference evaluation compares against;
- ``calibration_example(row, task_cfg, text) -> Example``: what data-driven inits see for a training row:
  ``text=train`` (the row as formatted for training) or ``text=reference`` (the Astra reference code's
  ``instruction + "\\n### Response:" + output``, without the Alpaca header);
- ``evaluate(model, tokenizer, examples, task_cfg, settings) -> {"metrics", "samples", "items"}``, writing every
  generation and score to ``settings.records_path`` (jsonl) for inspection; ``items`` is
  :func:`item_outcomes` of those records (per item: an id and whether it was right), handed over in memory.

Adding a benchmark of an existing family is one YAML: its ``format`` names one of the family's row formats and
its ``benchmark`` a row of the family's table (``commonsense_benchmarks.BENCHMARKS``, ``glue_data.GLUE_TASKS``);
a benchmark the table lacks states the same facts under ``task.benchmark_facts.<name>`` in its YAML.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from astra.data.batches import collate, tokenize_example
from astra.data.examples import Example

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
REFERENCE_CALIBRATION_PROMPT = "{instruction}\n### Response:"  # the Astra reference code's calibration text
CALIBRATION_TEXTS = ("train", "reference")

FAMILIES = {"math": "astra.tasks.math:MathFamily", "commonsense": "astra.tasks.commonsense:CommonsenseFamily",
            "code": "astra.tasks.code:CodeFamily", "glue": "astra.tasks.glue:GlueFamily"}


@dataclass
class EvalSettings:
    limit: int | None
    device: torch.device
    records_path: Path | None = None


class TaskFamily:
    """Base class; a family overrides the row formats and ``evaluate``.

    The model side is declared, not branched on: ``head`` names the model head the family trains (the pipeline
    maps it to a transformers class, a PEFT task type and a Lightning module), ``tokenize`` / ``collate`` turn
    examples into batches for that head, ``eval_splits`` names the splits evaluation scores."""

    name = "base"
    head = "causal_lm"  # or "sequence_classification"

    def model_head(self, task_cfg: Any) -> dict[str, Any]:
        """What the model needs to know about the task's head: ``{"kind", ...}`` (``num_labels``, ``problem_type``)."""
        return {"kind": self.head}

    def eval_splits(self, task_cfg: Any) -> list[str]:
        """The splits evaluation scores (MNLI: matched and mismatched dev)."""
        return ["test"]

    def tokenize(self, example: Example, tokenizer: Any, max_length: int) -> dict:
        return tokenize_example(example, tokenizer, max_length)

    def collate(self, features: list[dict], pad_token_id: int, pad_to: int | None = None) -> dict:
        return collate(features, pad_token_id, pad_to)

    def check_ready(self, task_cfg: Any) -> None:
        """Called before anything is loaded: refuse early what evaluation would refuse after hours of training."""
        from astra.tasks.generation import check_backend

        check_backend(task_cfg)

    def read_file(self, path: Path, task_cfg: Any = None) -> tuple[list[dict], list[str]] | None:
        """Rows and their locations from a file that is not JSON / JSON Lines; None: not a format of this family."""
        return None

    def row_formats(self) -> dict[str, Any]:
        """``{format name: callable(row, split, task_cfg) -> Example}``."""
        raise NotImplementedError

    def format_row(self, row: dict, split: str, task_cfg: Any) -> Example:
        formats = self.row_formats()
        # every split but "train" is scored (a suite's splits are named after its benchmarks): task.format
        name = (task_cfg.get("train_format") or task_cfg.format) if split == "train" else task_cfg.format
        if name not in formats:
            raise ValueError(f"task.format={name!r} is not a {self.name} row format; valid: {sorted(formats)}")
        return formats[name](row, split, task_cfg)

    def instruction_and_output(self, row: dict, task_cfg: Any) -> tuple[str, str]:
        """The bare instruction and target of a training row (for ``text=reference`` calibration)."""
        raise NotImplementedError

    def calibration_example(self, row: dict, task_cfg: Any, text: str) -> Example:
        if text not in CALIBRATION_TEXTS:
            raise ValueError(f"method.calibration.text={text!r} is not valid; expected one of {list(CALIBRATION_TEXTS)}")
        if text == "train":
            return self.format_row(row, "train", task_cfg)
        instruction, output = self.instruction_and_output(row, task_cfg)
        return Example(REFERENCE_CALIBRATION_PROMPT.format(instruction=instruction), output, None)

    def evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings) -> dict:
        raise NotImplementedError


def get_family(name: str) -> TaskFamily:
    if name not in FAMILIES:
        raise ValueError(f"task.family={name!r} is unknown; valid families: {sorted(FAMILIES)}")
    module_name, class_name = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def write_records(path: Path | None, records: list[dict]) -> None:
    """Every generation and score, one JSON object a line, for inspection after the run."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def item_outcomes(records: list[dict]) -> dict[str, list] | None:
    """Per test item, in evaluation order: an id and whether it was right (``{"ids", "correct"}``), for paired
    comparisons between runs (the report's bootstrap intervals); None when the task scores no item as right/wrong
    (STS-B's regression) or scored nothing. Computed from the records ``evaluate`` writes, so the file on disk and
    the outcomes in the result always agree."""
    if not records or not all("correct" in record for record in records):
        return None

    def item_id(position: int, record: dict) -> str:
        for key in ("id", "task_id", "index"):
            if record.get(key) is not None:
                return str(record[key])
        if record.get("idx") is not None:
            return f"{record.get('split', '')}:{record['idx']}"
        return str(position)

    return {"ids": [item_id(k, r) for k, r in enumerate(records)], "correct": [int(bool(r["correct"])) for r in records]}
