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

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


def _spec(name, fields, labels, metrics, header, columns, dev=("dev",)) -> GlueTaskSpec:
    hub = tuple((split, "validation" + split.removeprefix("dev")) for split in dev)
    num_labels = len(labels) if labels else 1
    return GlueTaskSpec(name, fields, num_labels, labels, metrics, dev, (("train", "train"), *hub), header, columns)


_MNLI_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")  # then label1 .. and gold_label  # fmt: skip
GLUE_TASKS: dict[str, GlueTaskSpec] = {
    spec.name: spec
    for spec in (
        _spec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
              _MNLI_HEADER, ("sentence1", "sentence2", "gold_label"), dev=("dev_matched", "dev_mismatched")),
        _spec("sst2", ("sentence",), ("0", "1"), ("accuracy",), ("sentence", "label"), ("sentence", "", "label")),
        _spec("cola", ("sentence",), ("0", "1"), ("mcc", "accuracy"), (), ("sentence", "", "label")),
        _spec("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
              ("index", "question", "sentence", "label"), ("question", "sentence", "label")),
        _spec("mrpc", ("sentence1", "sentence2"), ("0", "1"), ("accuracy", "f1"),
              ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String", "Quality")),
        _spec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
              ("index", "sentence1", "sentence2", "label"), ("sentence1", "sentence2", "label")),
        _spec("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearman"),
              ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"), ("sentence1", "sentence2", "score")),
        _spec("qqp", ("question1", "question2"), ("0", "1"), ("accuracy", "f1"),
              ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("question1", "question2", "is_duplicate")),
    )
}  # fmt: skip
_COLA_COLUMNS = ("source", "label", "original_judgement", "sentence")  # CoLA's headerless layout


def _task(name: str) -> GlueTaskSpec:
    if name not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[name]


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
    if spec.name == "cola":
        return {name: k for k, name in enumerate(_COLA_COLUMNS)}, False
    is_header = tuple(first[: len(spec.header)]) == spec.header
    if is_header:
        return {name: k for k, name in enumerate(first)}, True
    if spec.name == "mnli":  # headerless MNLI: the gold label is the last column
        return {**{name: k for k, name in enumerate(spec.header)}, "gold_label": -1}, False
    return {name: k for k, name in enumerate(spec.header)}, False


def read_glue_tsv(task: str, path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a GLUE TSV file and, in parallel, their locations (``"file <path> line <n>"``)."""
    spec, path = _task(task), Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {task} file {path} does not exist")
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


def read_hub_row(task: str, row: dict[str, Any], position: int) -> dict[str, Any]:
    """One ``nyu-mll/glue`` row -> a row as :func:`read_glue_tsv` gives it."""
    spec = _task(task)
    where = f"hub nyu-mll/glue/{task} row {position}"
    missing = [field for field in (*spec.text_fields, "label") if field not in row]
    if missing:
        raise GlueDataError(f"{where}: missing fields {missing}; a {task} row has {list(spec.text_fields) + ['label']}")
    label = row["label"]
    if label is None or (not spec.is_regression and int(label) == -1):
        raise GlueDataError(f"{where}: label {label!r} is hidden (GLUE's test split): score on the validation split")
    if not spec.is_regression and not 0 <= int(label) < spec.num_labels:
        raise GlueDataError(f"{where}: label {label!r} is not a class index 0..{spec.num_labels - 1}")
    text_b = row[spec.text_fields[1]] if len(spec.text_fields) > 1 else None
    return {"text_a": row[spec.text_fields[0]], "text_b": text_b,
            "label": float(label) if spec.is_regression else int(label), "idx": row.get("idx", position - 1)}  # fmt: skip

