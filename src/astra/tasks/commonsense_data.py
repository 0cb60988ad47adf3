"""Commonsense benchmarks as multiple-choice items for lm-eval's zero-shot log-likelihood protocol.

Every reader returns items ``{"id", "task", "query", "choices", "gold", "answer_word"}``: ``query`` is the context,
each choice the continuation scored after lm-eval's target delimiter (one space), ``gold`` the index of the right
choice and ``answer_word`` what the LLM-Adapters generation protocol expects the model to write ("solution1",
"answer3", "true", "option2", "ending4"). WinoGrande items add ``continuation`` (see below).

Prompts follow lm-eval 0.4.13's built-in tasks, with these differences forced by the files:

- boolq: the LLM-Adapters file has no passage, so the query is ``"Question: {question}?\\nAnswer:"`` (lm-eval:
  ``"{passage}\\nQuestion: {question}?\\nAnswer:"``); choices ``["no", "yes"]``, gold 1 for "true".
- piqa ``"Question: {goal}\\nAnswer:"`` / [sol1, sol2]; siqa ``"Q: {context} {question}\\nA:"`` / 3 answers (the file
  joins context and question with one space already); arc_e, arc_c ``"Question: {question}\\nAnswer:"`` / 3-5
  answers; obqa ``"{question_stem}"`` / 4 answers: as lm-eval.
- winogrande: lm-eval's partial evaluation: ``query`` is the sentence before the blank, ``choices`` the two
  options, ``continuation`` the rest of the sentence after the blank; the scored text is ``" " + continuation``
  given ``query + option`` (lm-eval's ``multiple_input`` form, see ``commonsense_benchmarks.lm_eval_config``).
- hellaswag: lm-eval builds ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``; the text
  file has ``"<activity_label>: <ctx>"`` with ctx_b NOT capitalised and no ctx_a/ctx_b boundary, so when the
  context ends mid-sentence the fragment after its last ". " is capitalised (``str.capitalize``, as lm-eval), then
  lm-eval's ``preprocess`` is applied to the context and to each ending.

A malformed item raises ``CommonsenseDataError`` naming the file and the item's 1-based position (and, for the
HellaSwag text file, its first line).
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import Any

from astra.tasks.commonsense_benchmarks import BENCHMARKS, CommonsenseBenchmark, benchmark

# Views of the table in commonsense_benchmarks, under the names callers know.
TASKS = tuple(BENCHMARKS)
DATA_FILES = {name: b.data_file for name, b in BENCHMARKS.items()}  # below a data root such as /work/shared/data
EXPECTED_COUNTS = {name: b.expected_count for name, b in BENCHMARKS.items()}

_CHOOSE_ANSWER = r"Please choose the correct answer to the question: (?P<question>.*)\n\n(?P<options>Answer1: .*)\n\n"
# The LLM-Adapters instruction of each layout (commonsense_benchmarks.LAYOUTS; ``ending`` is read from its text file).
PATTERNS = {
    "true_false": re.compile(
        r"Please answer the following question with true or false, question: (?P<question>.*)"
        r"\n\nAnswer format: (?P<format>true/false)"
    ),
    "solution": re.compile(
        r"Please choose the correct solution to the question: (?P<question>.*)\n\n"
        r"Solution1: (?P<c1>.*)\n\nSolution2: (?P<c2>.*)\n\nAnswer format: (?P<format>solution1/solution2)"
    ),
    "option": re.compile(
        r"Please choose the correct answer to fill in the blank to complete the given sentence: "
        r"(?P<question>.*)\n\nOption1: (?P<c1>.*?) Option2: (?P<c2>.*?) "
        r"Answer format: (?P<format>option1/option2)"
    ),
    "answer": re.compile(_CHOOSE_ANSWER + r"Answer format: (?P<format>answer1(?:/answer\d)+)"),
}


class CommonsenseDataError(ValueError):
    """A benchmark file or item that cannot be turned into a multiple-choice item."""


def answer_word(item: dict[str, Any]) -> str:
    """What LLM-Adapters' generation protocol expects for ``item`` ("solution1", "answer3", "true", ...)."""
    if "answer_word" in item:  # every item built here carries it (a benchmark from a task YAML is not in the table)
        return item["answer_word"]
    return BENCHMARKS[item["task"]].answer_word(item["gold"])


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess``: WikiHow bracket artefacts out, double spaces folded."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def make_item(task: str | CommonsenseBenchmark, position: int, query: str, choices: list[str], gold: int,
              **extra: Any) -> dict[str, Any]:  # fmt: skip
    """An item of benchmark ``task``; its id ``<benchmark>-<position>`` is what reports split suites by."""
    spec = benchmark(task)
    item = {"id": f"{spec.name}-{position}", "task": spec.name, "query": query, "choices": choices, "gold": gold, **extra}
    item["answer_word"] = spec.answer_word(gold)
    return item


def parse_llm_adapters_row(task: str | CommonsenseBenchmark, row: Any, where: str, position: int) -> dict[str, Any]:
    """One LLM-Adapters row ``{instruction, input, output, answer}`` -> item; ``where`` names it in errors."""
    spec = benchmark(task) if isinstance(task, CommonsenseBenchmark) or task in BENCHMARKS else None
    if spec is None or spec.layout not in PATTERNS:
        known = sorted(name for name, b in BENCHMARKS.items() if b.layout in PATTERNS)
        raise CommonsenseDataError(f"{where}: task {task!r} has no LLM-Adapters format (known: {known})")
    if (
        not isinstance(row, dict)
        or not isinstance(row.get("instruction"), str)
        or not isinstance(row.get("answer"), str)
    ):
        raise CommonsenseDataError(
            f"{where}: expected an object with string 'instruction' and 'answer', got {row!r:.200}"
        )
    match = PATTERNS[spec.layout].fullmatch(row["instruction"])
    if match is None:
        raise CommonsenseDataError(
            f"{where}: the instruction does not match the {spec.name} format; it starts {row['instruction'][:160]!r}"
        )
    words = match["format"].split("/")
    if spec.layout == "true_false":
        choices = ["no", "yes"]
    elif "options" in match.groupdict():
        names = [w.capitalize() for w in words]  # Answer1, Answer2, ...
        option_re = " ".join(f"{name}: (.*?)" for name in names)
        options = re.fullmatch(option_re, match["options"])
        if options is None:
            raise CommonsenseDataError(f"{where}: cannot split {match['options'][:160]!r} into {'/'.join(names)}")
        choices = list(options.groups())
    else:
        choices = [match["c1"], match["c2"]]
    if len(choices) != len(words):
        raise CommonsenseDataError(f"{where}: {len(choices)} options but the answer format lists {match['format']}")
    valid = [spec.answer_word(k) for k in range(len(choices))]
    answer = row["answer"].strip().lower()
    if answer not in valid:
        raise CommonsenseDataError(f"{where}: answer {row['answer']!r} is not one of {valid}")
    gold = valid.index(answer)
    question = match["question"]
    if spec.layout == "true_false":
        return make_item(spec, position, spec.query.format(question.rstrip().rstrip("?")), choices, gold)
    if spec.layout == "option":
        if question.count("_") != 1:
            raise CommonsenseDataError(f"{where}: expected one '_' blank in the sentence {question[:160]!r}")
        blank = question.index("_")
        return make_item(spec, position, question[:blank], choices, gold, continuation=question[blank + 1 :].strip())
    return make_item(spec, position, spec.query.format(question), choices, gold)


def read_llm_adapters(task: str | CommonsenseBenchmark, path: str | Path) -> list[dict[str, Any]]:
    """All items of an LLM-Adapters ``test.json`` (a JSON array of rows)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CommonsenseDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(rows, list):
        raise CommonsenseDataError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
    return [parse_llm_adapters_row(task, row, f"{path}: item {i}", i) for i, row in enumerate(rows, 1)]


def _capitalize_open_sentence(context: str) -> str:
    """``ctx_b.capitalize()`` approximated: the text file has ctx_a and ctx_b joined, ctx_b uncapitalised."""
    if context.rstrip().endswith((".", "!", "?", '"')):
        return context  # ends on a full sentence: ctx_b is empty
    head, dot, tail = context.rpartition(". ")
    if dot and tail[:1].islower():
        return head + dot + tail.capitalize()
    return context


def read_hellaswag(path: str | Path) -> list[dict[str, Any]]:
    """HellaSwag from the 6-lines-per-item text file (``.bz2`` or plain): context, gold label 0-3, 4 endings."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        start = len(lines) - len(lines) % 6 + 1
        raise CommonsenseDataError(
            f"{path}: item {len(lines) // 6 + 1} (line {start}): incomplete, {len(lines) % 6} of 6 lines "
            f"(context, label, 4 endings)"
        )
    items = []
    for k in range(len(lines) // 6):
        context, label, *endings = lines[6 * k : 6 * k + 6]
        where = f"{path}: item {k + 1} (line {6 * k + 1})"
        if not context.strip():
            raise CommonsenseDataError(f"{where}: empty context line")
        if label.strip() not in ("0", "1", "2", "3"):
            raise CommonsenseDataError(f"{where}: gold label on line {6 * k + 2} is {label!r}, expected 0-3")
        for j, ending in enumerate(endings):
            if not ending.strip():
                raise CommonsenseDataError(f"{where}: ending {j + 1} (line {6 * k + 3 + j}) is empty")
        query = hellaswag_preprocess(_capitalize_open_sentence(context))
        items.append(make_item("hellaswag", k + 1, query, [hellaswag_preprocess(e) for e in endings], int(label)))
    return items


def read_task(task: str | CommonsenseBenchmark, path: str | Path) -> list[dict[str, Any]]:
    """Items of ``task`` (one of ``TASKS``, or a benchmark row) from its file."""
    spec = benchmark(task)
    return read_hellaswag(path) if spec.layout == "ending" else read_llm_adapters(spec, path)


def read_from_root(task: str, data_root: str | Path) -> list[dict[str, Any]]:
    """Items of ``task`` from its usual file below ``data_root`` (see ``DATA_FILES``)."""
    return read_task(task, Path(data_root) / benchmark(task).data_file)
