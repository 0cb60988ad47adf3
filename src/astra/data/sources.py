"""Reading task rows from the shipped sample, local files, or the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).parent / "samples"
SOURCES = ("sample", "files", "hub")


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl file (one object per line) or a .json file (an array of objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: malformed JSON row ({error.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        return rows
    if path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError(f"{path}: expected a JSON array of objects")
        return rows
    raise ValueError(f"data file {path} has suffix {path.suffix!r}; expected .jsonl or .json")


def _hub_rows(hub: Any, split: str) -> list[dict]:
    from astra.models import _hub_reachable

    if not _hub_reachable():
        raise RuntimeError(
            f"task.source=hub needs the Hugging Face Hub for dataset {hub.path!r}, which cannot be reached; "
            "use task.source=files with task.train_file=... and task.test_file=... (local .jsonl/.json)"
        )
    import datasets

    dataset = datasets.load_dataset(hub.path, hub.get("name"), split=split)
    return [dict(row) for row in dataset]


def load_split(task_cfg: Any, split: str) -> list[dict]:
    """Rows of ``split`` ('train' or 'test') for the task, from the source the task config names."""
    source = task_cfg.source
    if source == "sample":
        return read_rows(SAMPLES_DIR / task_cfg.sample_dir / f"{split}.jsonl")
    if source == "files":
        path = task_cfg.get(f"{split}_file")
        if not path:
            raise ValueError(f"task.source=files needs task.{split}_file=<path to .jsonl or .json>")
        return read_rows(os.path.expanduser(str(path)))
    if source == "hub":
        return _hub_rows(task_cfg.hub, task_cfg.hub[f"{split}_split"])
    raise ValueError(f"task.source={source!r} is unknown; valid sources: {list(SOURCES)}")
