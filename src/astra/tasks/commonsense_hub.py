"""Commonsense test items from the benchmarks' own Hub datasets, the ones lm-eval 0.4.13's built-in tasks read.

LLM-Adapters' test files are not on the Hub in their own form, but they are the validation (BoolQ, PIQA, SIQA,
HellaSwag, WinoGrande) or test (ARC, OBQA) splits of these datasets, re-worded as instructions. A Hub row becomes
the same item as ``commonsense_data`` builds from a file (``query``, ``choices``, ``gold``, ``answer_word``), with
lm-eval's prompt for the log-likelihood protocol and LLM-Adapters' ``instruction`` for the generation protocol.

One difference from the files, from the data rather than a choice: BoolQ's Hub rows carry the passage, so the
log-likelihood query is lm-eval's own ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` (the LLM-Adapters file has
no passage and is scored on the question alone); the generation instruction has no passage, as LLM-Adapters.

A reader is chosen by the rows' schema (``CommonsenseBenchmark.hub_layout``), not by the benchmark's name, so a
new benchmark whose Hub rows share a schema (``{question, choices, answerKey}`` as ARC's) needs no code.
"""

from __future__ import annotations

from typing import Any

from astra.tasks.commonsense_benchmarks import CommonsenseBenchmark, benchmark
from astra.tasks.commonsense_data import CommonsenseDataError, hellaswag_preprocess, make_item

# The fields a Hub row of each schema (``CommonsenseBenchmark.hub_layout``) must hold; "{question}": hub_question.
FIELDS = {
    "boolq": ("question", "passage", "label"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "siqa": ("context", "question", "answerA", "answerB", "answerC", "label"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "choices": ("{question}", "choices", "answerKey"),
}
_CHOOSE = "Please choose the correct answer to the question: {question}\n\n{options}\n\nAnswer format: {words}"


def _numbered(name: str, choices: list[str]) -> tuple[str, str]:
    options = " ".join(f"{name}{k + 1}: {choice}" for k, choice in enumerate(choices))
    return options, "/".join(f"{name.lower()}{k + 1}" for k in range(len(choices)))


def _gold(value: Any, valid: list[str], where: str, field: str) -> int:
    text = str(value).strip()
    if text not in valid:
        raise CommonsenseDataError(f"{where}: {field}={value!r} is not one of {valid}")
    return valid.index(text)


def _choices_with_key(row: dict, where: str) -> tuple[list[str], int]:
    choices = row["choices"]
    if not isinstance(choices, dict) or not isinstance(choices.get("text"), list) or not isinstance(choices.get("label"), list):
        raise CommonsenseDataError(f"{where}: choices must be {{'text': [...], 'label': [...]}}, got {choices!r:.160}")
    return list(choices["text"]), _gold(row["answerKey"], [str(label) for label in choices["label"]], where, "answerKey")


def _boolq(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    question = row["question"].strip().rstrip("?")
    instruction = f"Please answer the following question with true or false, question: {question}?\n\nAnswer format: true/false"
    gold = _gold(int(row["label"]) if isinstance(row["label"], bool) else row["label"], ["0", "1"], where, "label")
    query = f"{row['passage']}\nQuestion: {question}?\nAnswer:"  # lm-eval's own query: the Hub row has the passage
    return make_item(spec, position, query, ["no", "yes"], gold, instruction=instruction)


def _piqa(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    choices = [row["sol1"], row["sol2"]]
    instruction = (f"Please choose the correct solution to the question: {row['goal']}\n\nSolution1: {choices[0]}"
                   f"\n\nSolution2: {choices[1]}\n\nAnswer format: solution1/solution2")  # fmt: skip
    gold = _gold(row["label"], ["0", "1"], where, "label")
    return make_item(spec, position, spec.query.format(row["goal"]), choices, gold, instruction=instruction)


def _siqa(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    choices, question = [row["answerA"], row["answerB"], row["answerC"]], f"{row['context']} {row['question']}"
    options, words = _numbered("Answer", choices)
    gold = _gold(row["label"], ["1", "2", "3"], where, "label")
    instruction = _CHOOSE.format(question=question, options=options, words=words)
    return make_item(spec, position, spec.query.format(question), choices, gold, instruction=instruction)


def _winogrande(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    sentence = row["sentence"]
    if sentence.count("_") != 1:
        raise CommonsenseDataError(f"{where}: expected one '_' blank in the sentence {sentence[:160]!r}")
    choices, blank = [row["option1"], row["option2"]], sentence.index("_")
    gold = _gold(row["answer"], ["1", "2"], where, "answer")
    instruction = ("Please choose the correct answer to fill in the blank to complete the given sentence: "
                   f"{sentence}\n\nOption1: {choices[0]} Option2: {choices[1]} Answer format: option1/option2")  # fmt: skip
    return make_item(spec, position, sentence[:blank], choices, gold,
                     continuation=sentence[blank + 1 :].strip(), instruction=instruction)  # fmt: skip


def _hellaswag(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + context)
    endings = [hellaswag_preprocess(ending) for ending in row["endings"]]
    gold = _gold(row["label"], [str(k) for k in range(len(endings))], where, "label")
    return make_item(spec, position, query, endings, gold)  # the family builds LLM-Adapters' instruction


def _choices(spec: CommonsenseBenchmark, row: dict, position: int, where: str) -> dict[str, Any]:
    choices, gold = _choices_with_key(row, where)
    question = row[spec.hub_question]
    options, words = _numbered("Answer", choices)
    instruction = _CHOOSE.format(question=question, options=options, words=words)
    return make_item(spec, position, spec.query.format(question), choices, gold, instruction=instruction)


READERS = {"boolq": _boolq, "piqa": _piqa, "siqa": _siqa, "winogrande": _winogrande, "hellaswag": _hellaswag,
           "choices": _choices}  # fmt: skip


def hub_item(task: str | CommonsenseBenchmark, row: dict, position: int, where: str,
             dataset: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One Hub row of benchmark ``task`` -> an item with its LLM-Adapters ``instruction``; ``dataset`` (the task's
    ``hub.test`` path) is named in errors."""
    try:
        spec = benchmark(task)
    except ValueError:
        spec = None
    if spec is None or spec.hub_layout is None:
        raise CommonsenseDataError(f"{where}: no Hub reader for benchmark {task!r} (known: {sorted(READERS)} schemas)")
    needed = [spec.hub_question if name == "{question}" else name for name in FIELDS[spec.hub_layout]]
    missing = [name for name in needed if name not in row]
    if missing:
        hint = f" (is task.hub.test the dataset {dataset!r}?)" if dataset else " (is task.hub.test the right dataset?)"
        raise CommonsenseDataError(f"{where}: a {spec.name} Hub row needs fields {needed}; missing {missing}{hint}")
    return READERS[spec.hub_layout](spec, row, position, where)
