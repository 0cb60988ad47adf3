"""The math family: GSM8K and MATH, trained on the benchmark's own train split or on MetaMathQA.

Protocol of the Astra reference code: the Alpaca prompt, "Let's think step by step." after "### Response:",
greedy decoding (up to 1024 new tokens for GSM8K, 2048 for MATH), the answer read after the last
"The answer is:"; GSM8K compared numerically with the number after "####", MATH compared by math-verify with
the reference solution's last \\boxed{}. Training targets end in "The answer is: <answer>", as MetaMathQA's do.
"""

from __future__ import annotations

import re
from typing import Any

from tqdm.auto import tqdm

from astra.data.examples import Example
from astra.tasks.base import ALPACA_PROMPT, EvalSettings, TaskFamily, item_outcomes, write_records
from astra.tasks.generation import generation_options, greedy_generate
from astra.tasks.math_answers import (
    extract_gsm8k_answer,
    extract_math_answer,
    gsm8k_correct,
    gsm8k_reference,
    last_boxed,
    math_correct,
)

ANSWER_PREFIX = "The answer is:"
_CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


def _require(row: dict, fields: tuple[str, ...], what: str) -> None:
    for key in fields:
        if key not in row:
            names = [repr(name) for name in fields]
            raise KeyError(f"{what} row lacks field {key!r}; expected fields {', '.join(names[:-1])} and {names[-1]}")


def _prompt(instruction: str, split: str, task_cfg: Any) -> str:
    prompt = ALPACA_PROMPT.format(instruction=instruction)
    return prompt + str(task_cfg.eval.get("prompt_suffix") or "") if split == "test" else prompt


def gsm8k_example(row: dict, split: str = "train", task_cfg: Any = None) -> Example:
    """GSM8K {question, answer} (or the {query, response} copy of the test set) -> the solution without
    calculator annotations, ending 'The answer is: N'."""
    if "query" in row and "question" not in row:
        _require(row, ("query", "response"), "GSM8K")
        row = {"question": row["query"], "answer": row["response"]}
    _require(row, ("question", "answer"), "GSM8K")
    final = gsm8k_reference(row["answer"])
    steps = _CALCULATOR_ANNOTATION.sub("", row["answer"].split("####")[0]).strip()
    prompt = ALPACA_PROMPT.format(instruction=row["question"]) if task_cfg is None else _prompt(row["question"], split, task_cfg)
    return Example(prompt, f" {steps}\n{ANSWER_PREFIX} {final}", final)


def math_example(row: dict, split: str, task_cfg: Any) -> Example:
    """MATH {problem, solution}: the reference is the solution's last \\boxed{} answer."""
    _require(row, ("problem", "solution"), "MATH")
    boxed = last_boxed(row["solution"])
    if boxed is None:
        raise ValueError("MATH solution has no \\boxed{...} answer")
    return Example(_prompt(row["problem"], split, task_cfg), f" {row['solution']}\n{ANSWER_PREFIX} {boxed}", row["solution"])


def metamath_example(row: dict, split: str, task_cfg: Any) -> Example:
    """MetaMathQA: {query, response} (meta-math/MetaMathQA) or {instruction, output} (fxmeng/pissa-dataset)."""
    instruction, output = _metamath_fields(row)
    return Example(_prompt(instruction, split, task_cfg), f" {output}", output.rsplit(ANSWER_PREFIX, 1)[-1].strip())


def llm_adapters_math_example(row: dict, split: str, task_cfg: Any) -> Example:
    """LLM-Adapters math rows {instruction, input, output, answer} (e.g. its GSM8K test.json): the answer is a number."""
    _require(row, ("instruction", "output", "answer"), "LLM-Adapters math")
    reference = extract_gsm8k_answer(f"{ANSWER_PREFIX} {row['answer']}")
    if reference is None:
        raise ValueError(f"LLM-Adapters math row's answer {row['answer']!r} is not a number")
    return Example(_prompt(row["instruction"], split, task_cfg), f" {row['output'].strip()}", reference)


def _metamath_fields(row: dict) -> tuple[str, str]:
    if "query" in row and "response" in row:
        return row["query"], row["response"]
    _require(row, ("instruction", "output"), "MetaMathQA")
    return row["instruction"], row["output"]


SCORERS = {
    "gsm8k_numeric": (gsm8k_correct, extract_gsm8k_answer),
    "math_verify": (math_correct, extract_math_answer),
}


class MathFamily(TaskFamily):
    name = "math"

    def format_row(self, row: dict, split: str, task_cfg: Any) -> Example:
        if split == "train" and task_cfg.get("train_format") == "auto":  # the fields say which data set it is
            name = "gsm8k" if "question" in row else "math" if "problem" in row else "metamath"
            return self.row_formats()[name](row, split, task_cfg)
        return super().format_row(row, split, task_cfg)

    def row_formats(self):
        return {"gsm8k": gsm8k_example, "math": math_example, "metamath": metamath_example,
                "llm_adapters": llm_adapters_math_example}  # fmt: skip

    def instruction_and_output(self, row: dict, task_cfg: Any) -> tuple[str, str]:
        if "question" in row or "response" in row and "####" in str(row.get("response")):
            example = gsm8k_example(row)
            return row.get("question", row.get("query")), example.answer.strip()
        if "problem" in row:
            return row["problem"], row["solution"]
        return _metamath_fields(row)

    def evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings) -> dict:
        metric = task_cfg.eval.metric
        if metric not in SCORERS:
            raise ValueError(f"task.eval.metric={metric!r} is not a math metric; valid: {sorted(SCORERS)}")
        correct_fn, extract_fn = SCORERS[metric]
        examples = examples[: settings.limit] if settings.limit else examples
        generations = greedy_generate(
            model, tokenizer, [e.prompt for e in examples], task_cfg.eval.max_new_tokens, task_cfg.eval.batch_size,
            settings.device, **generation_options(task_cfg, settings),
        )
        records = []
        for index, (example, text) in enumerate(tqdm(list(zip(examples, generations)), desc="score", leave=False)):
            records.append({"index": index, "prompt": example.prompt, "generation": text, "extracted": extract_fn(text),
                            "reference": example.reference, "correct": bool(correct_fn(text, example.reference))})  # fmt: skip
        write_records(settings.records_path, records)
        accuracy = sum(r["correct"] for r in records) / len(records)
        samples = [{k: r[k] for k in ("prompt", "generation", "extracted", "reference", "correct")} for r in records[:3]]
        for sample in samples:
            sample["prompt"], sample["generation"] = sample["prompt"][-200:], sample["generation"][:400]
        return {"metrics": {"accuracy": accuracy, "n_eval": float(len(records))}, "samples": samples,
                "items": item_outcomes(records)}
