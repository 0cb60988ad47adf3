"""Commonsense test items from the benchmarks' own Hub datasets, the ones lm-eval 0.4.13's built-in tasks read.

LLM-Adapters' test files are not on the Hub in their own form, but they are the validation (BoolQ, PIQA, SIQA,
HellaSwag, WinoGrande) or test (ARC, OBQA) splits of these datasets, re-worded as instructions. A Hub row becomes
the same item as ``commonsense_data`` builds from a file (``query``, ``choices``, ``gold``, ``answer_word``), with
lm-eval's prompt for the log-likelihood protocol and LLM-Adapters' ``instruction`` for the generation protocol.

One difference from the files, from the data rather than a choice: BoolQ's Hub rows carry the passage, so the
log-likelihood query is lm-eval's own ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` (the LLM-Adapters file has
no passage and is scored on the question alone); the generation instruction has no passage, as LLM-Adapters.
"""

from __future__ import annotations

from typing import Any

from astra.tasks.commonsense_data import CommonsenseDataError, _item, hellaswag_preprocess

# The Hub dataset of each benchmark's test items (what the YAMLs name under hub.test), as lm-eval 0.4.13.
HUB_TEST = {
    "boolq": {"path": "aps/super_glue", "name": "boolq", "split": "validation"},
    "piqa": {"path": "baber/piqa", "name": None, "split": "validation"},
    "siqa": {"path": "lighteval/siqa", "name": None, "split": "validation"},
    "hellaswag": {"path": "Rowan/hellaswag", "name": None, "split": "validation"},
    "winogrande": {"path": "allenai/winogrande", "name": "winogrande_xl", "split": "validation"},
    "arc_e": {"path": "allenai/ai2_arc", "name": "ARC-Easy", "split": "test"},
    "arc_c": {"path": "allenai/ai2_arc", "name": "ARC-Challenge", "split": "test"},
    "obqa": {"path": "allenai/openbookqa", "name": "main", "split": "test"},
}
_FIELDS = {
    "boolq": ("question", "passage", "label"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "siqa": ("context", "question", "answerA", "answerB", "answerC", "label"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "arc_e": ("question", "choices", "answerKey"),
    "arc_c": ("question", "choices", "answerKey"),
    "obqa": ("question_stem", "choices", "answerKey"),
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


def hub_item(benchmark: str, row: dict, position: int, where: str) -> dict[str, Any]:
    """One row of ``HUB_TEST[benchmark]`` -> an item with its LLM-Adapters ``instruction``."""
    if benchmark not in _FIELDS:
        raise CommonsenseDataError(f"{where}: no Hub reader for benchmark {benchmark!r} (known: {sorted(_FIELDS)})")
    missing = [field for field in _FIELDS[benchmark] if field not in row]
    if missing:
        raise CommonsenseDataError(
            f"{where}: a {benchmark} Hub row needs fields {list(_FIELDS[benchmark])}; missing {missing} "
            f"(is task.hub.test the dataset {HUB_TEST[benchmark]['path']!r}?)"
        )
    if benchmark == "boolq":
        question = row["question"].strip().rstrip("?")
        instruction = f"Please answer the following question with true or false, question: {question}?\n\nAnswer format: true/false"
        gold = _gold(int(row["label"]) if isinstance(row["label"], bool) else row["label"], ["0", "1"], where, "label")
        query = f"{row['passage']}\nQuestion: {question}?\nAnswer:"
        return _item(benchmark, position, query, ["no", "yes"], gold, instruction=instruction)
    if benchmark == "piqa":
        choices = [row["sol1"], row["sol2"]]
        instruction = (f"Please choose the correct solution to the question: {row['goal']}\n\nSolution1: {choices[0]}"
                       f"\n\nSolution2: {choices[1]}\n\nAnswer format: solution1/solution2")  # fmt: skip
        gold = _gold(row["label"], ["0", "1"], where, "label")
        return _item(benchmark, position, f"Question: {row['goal']}\nAnswer:", choices, gold, instruction=instruction)
    if benchmark == "siqa":
        choices, question = [row["answerA"], row["answerB"], row["answerC"]], f"{row['context']} {row['question']}"
        options, words = _numbered("Answer", choices)
        gold = _gold(row["label"], ["1", "2", "3"], where, "label")
        instruction = _CHOOSE.format(question=question, options=options, words=words)
        return _item(benchmark, position, f"Q: {question}\nA:", choices, gold, instruction=instruction)
    if benchmark == "winogrande":
        sentence = row["sentence"]
        if sentence.count("_") != 1:
            raise CommonsenseDataError(f"{where}: expected one '_' blank in the sentence {sentence[:160]!r}")
        choices, blank = [row["option1"], row["option2"]], sentence.index("_")
        gold = _gold(row["answer"], ["1", "2"], where, "answer")
        instruction = ("Please choose the correct answer to fill in the blank to complete the given sentence: "
                       f"{sentence}\n\nOption1: {choices[0]} Option2: {choices[1]} Answer format: option1/option2")  # fmt: skip
        return _item(benchmark, position, sentence[:blank], choices, gold,
                     continuation=sentence[blank + 1 :].strip(), instruction=instruction)  # fmt: skip
    if benchmark == "hellaswag":
        context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        query = hellaswag_preprocess(row["activity_label"] + ": " + context)
        endings = [hellaswag_preprocess(ending) for ending in row["endings"]]
        gold = _gold(row["label"], [str(k) for k in range(len(endings))], where, "label")
        return _item(benchmark, position, query, endings, gold)  # the family builds LLM-Adapters' instruction
    choices, gold = _choices_with_key(row, where)
    question = row["question_stem"] if benchmark == "obqa" else row["question"]
    options, words = _numbered("Answer", choices)
    instruction = _CHOOSE.format(question=question, options=options, words=words)
    query = question if benchmark == "obqa" else f"Question: {question}\nAnswer:"
    return _item(benchmark, position, query, choices, gold, instruction=instruction)

