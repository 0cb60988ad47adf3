"""Reading task rows from the shipped sample, local files, or the Hugging Face Hub.

Every row keeps where it came from (file and 1-based line, or Hub dataset and row), so an error about a
row can point at the line to fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from json.decoder import WHITESPACE
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).parent / "samples"
SOURCES = ("sample", "files", "hub")


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split and, in parallel, where each is (``"file /data/train.jsonl line 5"``)."""

    rows: list[dict]
    locations: list[str]
    origin: str  # the whole split, e.g. "file /data/train.jsonl" or "hub openai/gsm8k split 'train'"

    def __len__(self) -> int:
        return len(self.rows)


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise ValueError(
            f"{path} line {line}: byte 0x{data[offset]:02x} at file offset {offset} (byte {column} of the line) "
            f"is not valid UTF-8 ({error.reason}); save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is still UTF-8 (editors on Windows write one)


def _object_or_error(row: Any, path: Path, line: int, expected: str) -> dict:
    if not isinstance(row, dict):
        raise ValueError(f"{path} line {line}: expected a JSON object ({expected}), got {type(row).__name__}")
    return row


def jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    # split("\n"), not splitlines(): line numbers must match what editors show, and splitlines() also
    # breaks on characters such as \u2028 that may sit inside a JSON string.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {line_number}: malformed JSON row ({error.msg} at column {error.colno})"
            ) from None
        rows.append((line_number, _object_or_error(row, path, line_number, "one object per line")))
    return rows


def _json_array_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    if not text.strip():
        return []  # an empty file is an empty split (reported as such), not a JSON syntax error
    try:
        document = json.loads(text)  # validates the whole file first, so the walk below cannot fail
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(document, list):
        raise ValueError(
            f"{path}: expected a JSON array of objects ([{{...}}, {{...}}]), got {type(document).__name__}; "
            "or use a .jsonl file with one object per line"
        )
    decoder, rows = json.JSONDecoder(), []
    position = WHITESPACE.match(text, 0).end() + 1  # just past '['
    line, counted_to = 1, 0
    for _ in document:
        start = WHITESPACE.match(text, position).end()
        line, counted_to = line + text.count("\n", counted_to, start), start
        row, end = decoder.raw_decode(text, start)
        rows.append((line, _object_or_error(row, path, line, "each array element")))
        position = WHITESPACE.match(text, end).end() + 1  # just past ',' or ']'
    return rows


def require_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` if it is a readable file; else an error that says what it is instead (a directory, nothing)."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir())[:8]
        raise IsADirectoryError(f"{what} {path} is a directory, not a file; name a file inside it "
                                f"(it holds: {', '.join(inside) or 'nothing'})")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def read_rows_with_lines(path: str | Path) -> list[tuple[int, dict]]:
    """``(line, row)`` pairs of a .jsonl file (one object per line) or a .json file (an array of objects);
    ``line`` is 1-based: the row's line in a .jsonl file, the line its object starts on in a .json file."""
    path = require_file(path)
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"data file {path} has suffix {path.suffix!r}; expected .jsonl or .json")
    text = _decode_utf8(path)
    # Some published .json files hold JSON Lines (MATH's test.json in several repositories): an object first,
    # not an array, says so unambiguously.
    lines_format = path.suffix == ".jsonl" or text.lstrip().startswith("{")
    return jsonl_rows(path, text) if lines_format else _json_array_rows(path, text)


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl file (one object per line) or a .json file (an array of objects)."""
    return [row for _, row in read_rows_with_lines(path)]


def _file_split(path: str | Path, reader: Any = None, what: str = "data file") -> SplitRows:
    """The task family's ``reader`` first (e.g. HellaSwag's 6-line text file, or training files whose rows the
    family tags), which returns ``(rows, locations)`` or None when it does not know the file; then JSON / JSON Lines
    through the generic reader."""
    require_file(path, what)  # before a family's reader sees it: a directory is named as one, not "does not exist"
    special = reader(Path(path)) if reader is not None else None
    if special is not None:
        return SplitRows(special[0], special[1], f"file {path}")
    numbered = read_rows_with_lines(path)
    return SplitRows([row for _, row in numbered], [f"file {path} line {line}" for line, _ in numbered], f"file {path}")


def _hub_split(hub: Any, split: str) -> SplitRows:
    """``hub`` is ``{path, name, split}`` for this split (task.hub.train / task.hub.test)."""
    from astra.models.sources import hub_reachable

    if not hub_reachable():
        raise RuntimeError(
            f"task.source=hub needs the Hugging Face Hub for dataset {hub.path!r}, which cannot be reached; "
            "use task.source=files with task.data.train=... and task.data.test=... (local .jsonl/.json)"
        )
    import datasets

    rows = [dict(row) for row in datasets.load_dataset(hub.path, hub.get("name"), split=hub.split)]
    origin = f"hub {hub.path} split {hub.split!r}"
    return SplitRows(rows, [f"{origin} row {number}" for number in range(1, len(rows) + 1)], origin)


def _sample_file(folder: Path, split: str) -> Path:
    found = sorted(p for p in folder.glob(f"{split}.*") if p.suffix != ".md")
    if not found:
        raise FileNotFoundError(f"no {split} file in the shipped sample folder {folder}")
    return found[0]


def load_split(task_cfg: Any, split: str, reader: Any = None) -> SplitRows:
    """Rows of ``split`` ('train' or 'test') for the task, with their locations, from the source the task
    config names."""
    source = task_cfg.source
    if source == "sample":
        # sample_dir: one folder for both splits, or {train: folder, test: folder}
        folder = task_cfg.sample_dir if isinstance(task_cfg.sample_dir, str) else task_cfg.sample_dir[split]
        if (SAMPLES_DIR / folder).is_file():  # a file named directly (a suite's per-benchmark test files)
            return _file_split(SAMPLES_DIR / folder, reader)
        return _file_split(_sample_file(SAMPLES_DIR / folder, split), reader)
    if source == "files":
        path = (task_cfg.get("data") or {}).get(split)
        if not path:
            raise ValueError(f"task.source=files needs task.data.{split}=<path to the {split} file>")
        if isinstance(path, str):
            return _file_split(os.path.expanduser(path), reader, f"task.data.{split}")
        # A list of files: their rows in order (a training mix such as several LLM-Adapters training files).
        parts = [_file_split(os.path.expanduser(str(item)), reader, f"task.data.{split}") for item in path]
        rows = [row for part in parts for row in part.rows]
        locations = [location for part in parts for location in part.locations]
        return SplitRows(rows, locations, " + ".join(part.origin for part in parts))
    if source == "hub":
        return _hub_split(task_cfg.hub[split], split)
    raise ValueError(f"task.source={source!r} is unknown; valid sources: {list(SOURCES)}")
