"""The eight GLUE tasks: what each row holds, and readers of the GLUE distribution's TSV files and the Hub's rows.

Every reader returns rows ``{"text_a", "text_b", "label", "idx"}``: ``text_b`` is None for single-sentence tasks,
``label`` the class index in ``label_names`` order (the Hub dataset ``nyu-mll/glue``'s order) or, for STS-B, the
similarity score as a float.

The TSV layouts are those of the original GLUE zip (``glue_data/<TASK>/{train,dev}.tsv``). Columns are found by
header name where the file has a header; a file without its header row is read in the canonical column order
(CoLA never has one). Quoting is off, as GLUE writes its files: a ``"`` is part of the text. An error names the
file, the 1-based line and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astra.data.sources import require_file


class GlueDataError(ValueError):
    """A GLUE file or row that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class GlueTaskSpec:
    name: str
    text_fields: tuple[str, ...]  # the Hub dataset's text columns (nyu-mll/glue)
    num_labels: int  # 1: regression (STS-B)
    label_names: tuple[str, ...]  # the TSV's label strings, in the Hub's label order; () for regression
    metrics: tuple[str, ...]  # the first is the primary metric
    dev_splits: tuple[str, ...]
    hub_splits: tuple[tuple[str, str], ...]  # (our split, nyu-mll/glue split)
    header: tuple[str, ...]  # the TSV header as GLUE writes it (() when the file has none: CoLA)
    columns: tuple[str, ...]  # header names of text_a, text_b (or ""), label
    headerless: tuple[str, ...] = ()  # the columns of a file without a header row; (): the header's
    label_last: bool = False  # a headerless file's label is its last column (MNLI: a varying number of label1..N)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def glue_spec(name: str, text_fields, label_names, metrics, header, columns, dev_splits=("dev",), headerless=(),
              label_last: bool = False) -> GlueTaskSpec:  # fmt: skip
    """A task's row from its facts (lists as in a task YAML's ``benchmark_facts``); ``label_names`` empty: regression.
    The Hub splits follow from the dev splits (``dev_matched`` -> ``validation_matched``)."""
    dev = tuple(dev_splits)
    hub = tuple((split, "validation" + split.removeprefix("dev")) for split in dev)
    labels = tuple(label_names)
    return GlueTaskSpec(name, tuple(text_fields), len(labels) if labels else 1, labels, tuple(metrics), dev,
                        (("train", "train"), *hub), tuple(header), tuple(columns), tuple(headerless), label_last)  # fmt: skip


_MNLI_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")  # then label1 .. and gold_label  # fmt: skip
_COLA_COLUMNS = ("source", "label", "original_judgement", "sentence")  # CoLA's files never have a header row
GLUE_TASKS: dict[str, GlueTaskSpec] = {
    spec.name: spec
    for spec in (
        glue_spec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
                  _MNLI_HEADER, ("sentence1", "sentence2", "gold_label"), dev_splits=("dev_matched", "dev_mismatched"),
                  label_last=True),
        glue_spec("sst2", ("sentence",), ("0", "1"), ("accuracy",), ("sentence", "label"), ("sentence", "", "label")),
        glue_spec("cola", ("sentence",), ("0", "1"), ("mcc", "accuracy"), (), ("sentence", "", "label"),
                  headerless=_COLA_COLUMNS),
        glue_spec("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
                  ("index", "question", "sentence", "label"), ("question", "sentence", "label")),
        glue_spec("mrpc", ("sentence1", "sentence2"), ("0", "1"), ("accuracy", "f1"),
                  ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String", "Quality")),
        glue_spec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
                  ("index", "sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label")),
        glue_spec("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearman"),
                  ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                   "score"), ("sentence1", "sentence2", "score")),
        glue_spec("qqp", ("question1", "question2"), ("0", "1"), ("accuracy", "f1"),
                  ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("question1", "question2", "is_duplicate")),
    )
}  # fmt: skip


def task_row(task: str | GlueTaskSpec) -> GlueTaskSpec:
    """``task``'s row of ``GLUE_TASKS`` (a row given is returned as is: a task YAML's own ``benchmark_facts``)."""
    if isinstance(task, GlueTaskSpec):
        return task
    if task not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[task]


def _label(spec: GlueTaskSpec, value: str, where: str) -> int | float:
    text = value.strip()
    if not text:
        raise GlueDataError(f"{where}: the label is blank (GLUE's test labels are hidden: score on the dev files)")
    if spec.is_regression:
        try:
            return float(text)
        except ValueError:
            raise GlueDataError(f"{where}: score {value!r} is not a number (STS-B scores are 0..5)") from None
    if text not in spec.label_names:
        raise GlueDataError(f"{where}: label {value!r} is not one of {list(spec.label_names)}")
    return spec.label_names.index(text)


def _lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise GlueDataError(f"{path} line {line}: byte 0x{data[error.start]:02x} is not valid UTF-8") from None
    lines = text.removeprefix("\ufeff").split("\n")
    return [line.removesuffix("\r") for line in lines]


def _layout(spec: GlueTaskSpec, first: list[str]) -> tuple[dict[str, int], bool]:
    """Column positions, and whether the first line is the header."""
    if not spec.header:  # a task whose files never have one (CoLA)
        return {name: k for k, name in enumerate(spec.headerless)}, False
    is_header = tuple(first[: len(spec.header)]) == spec.header
    if is_header:
        return {name: k for k, name in enumerate(first)}, True
    layout = {name: k for k, name in enumerate(spec.headerless or spec.header)}
    if spec.label_last:
        layout[spec.columns[2]] = -1
    return layout, False


def read_glue_tsv(task: str | GlueTaskSpec, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a GLUE TSV file and, in parallel, their locations (``"file <path> line <n>"``)."""
    spec, path = task_row(task), Path(path)
    require_file(path, f"GLUE {spec.name} file")
    lines = _lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return [], []
    layout, has_header = _layout(spec, lines[0].split("\t"))
    text_a, text_b, label = spec.columns
    needed = [layout[text_a], *([layout[text_b]] if text_b else []), layout[label]]
    width = max(needed) + 1 if min(needed) >= 0 else len(spec.header) + 1
    expected = ", ".join(name for name in (text_a, text_b, label) if name)
    rows, locations = [], []
    for number, line in enumerate(lines, start=1):
        if (number == 1 and has_header) or not line.strip():
            continue
        where = f"{path} line {number}"
        fields = line.split("\t")
        if len(fields) < width:
            raise GlueDataError(f"{where}: expected at least {width} tab-separated columns ({expected} among them), got {len(fields)}")
        row = {"text_a": fields[layout[text_a]], "text_b": fields[layout[text_b]] if text_b else None,
               "label": _label(spec, fields[layout[label]], where), "idx": len(rows)}  # fmt: skip
        for key in ("text_a", "text_b"):
            if row[key] is not None and not row[key].strip():
                raise GlueDataError(f"{where}: the {text_a if key == 'text_a' else text_b} column is empty")
        rows.append(row)
        locations.append(f"file {where}")
    return rows, locations


def read_hub_row(task: str | GlueTaskSpec, row: dict[str, Any], position: int) -> dict[str, Any]:
    """One ``nyu-mll/glue`` row -> a row as :func:`read_glue_tsv` gives it."""
    spec = task_row(task)
    where = f"hub nyu-mll/glue/{spec.name} row {position}"
    missing = [field for field in (*spec.text_fields, "label") if field not in row]
    if missing:
        raise GlueDataError(f"{where}: missing fields {missing}; a {spec.name} row has {list(spec.text_fields) + ['label']}")
    label = row["label"]
    if label is None or (not spec.is_regression and int(label) == -1):
        raise GlueDataError(f"{where}: label {label!r} is hidden (GLUE's test split): score on the validation split")
    if not spec.is_regression and not 0 <= int(label) < spec.num_labels:
        raise GlueDataError(f"{where}: label {label!r} is not a class index 0..{spec.num_labels - 1}")
    text_b = row[spec.text_fields[1]] if len(spec.text_fields) > 1 else None
    return {"text_a": row[spec.text_fields[0]], "text_b": text_b,
            "label": float(label) if spec.is_regression else int(label), "idx": row.get("idx", position - 1)}  # fmt: skip

