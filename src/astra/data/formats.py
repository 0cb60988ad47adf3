"""Row formatters (raw data row -> prompt and answer text) and answer extractors, by task family.

The prompt is the Alpaca template the Astra reference code trains and evaluates with; GSM8K answers are
rewritten into MetaMathQA's ending ("The answer is: N") so training and evaluation read the answer the
same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
ANSWER_PREFIX = "The answer is:"
_CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class Example(NamedTuple):
    prompt: str
    answer: str  # the training target (full solution text)
    reference: str  # what evaluation compares against (e.g. the final number)


def gsm8k_final_number(answer: str) -> str:
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    return normalize_number(answer.split("####")[-1].strip())


def gsm8k_example(row: dict) -> Example:
    """GSM8K official row {question, answer} -> Alpaca prompt, solution ending 'The answer is: N'."""
    for key in ("question", "answer"):
        if key not in row:
            raise KeyError(f"GSM8K row lacks field {key!r}; expected fields 'question' and 'answer'")
    final = gsm8k_final_number(row["answer"])
    steps = _CALCULATOR_ANNOTATION.sub("", row["answer"].split("####")[0]).strip()
    solution = f" {steps}\n{ANSWER_PREFIX} {final}"
    return Example(ALPACA_PROMPT.format(instruction=row["question"]), solution, final)


FORMATTERS: dict[str, Callable[[dict], Example]] = {"gsm8k": gsm8k_example}


def get_formatter(name: str) -> Callable[[dict], Example]:
    if name not in FORMATTERS:
        raise ValueError(f"task.formatter={name!r} is unknown; valid formatters: {sorted(FORMATTERS)}")
    return FORMATTERS[name]


def normalize_number(text: str) -> str:
    """'1,234.50' -> '1234.5'; '7.0' -> '7'. Non-numbers come back stripped."""
    text = text.strip().replace(",", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else repr(value)


def extract_final_number(generation: str) -> str | None:
    """The number after the last 'The answer is:', else the last number in the text."""
    tail = generation.rsplit(ANSWER_PREFIX, 1)[-1] if ANSWER_PREFIX in generation else generation
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    return normalize_number(numbers[0] if ANSWER_PREFIX in generation else numbers[-1])
