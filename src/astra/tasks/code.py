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

Metrics: ``pass@1``, ``n_eval``, ``isolated`` (1.0 when every program ran network-isolated: bubblewrap or a
network namespace; 0.0 when any ran with ``isolation: none``), and with plus tests ``pass@1_plus`` and
``n_plus``. Every record (``settings.records_path``) holds the generation, the completion run, the status
("passed", "failed", "timeout", "memory", "error"), its detail (the traceback tail), seconds and the
isolation achieved.
"""

from __future__ import annotations

import base64
import gzip
import inspect
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from astra.data.sources import _jsonl_rows
from astra.tasks.base import ALPACA_PROMPT, EvalSettings, Example, TaskFamily, write_records
from astra.tasks.code_execution import (
    ExecutionPolicy,
    ExecutionResult,
    check_humaneval,
    check_mbpp,
    check_opt_in,
    pass_at_1,
    run_program,
)
from astra.tasks.generation import greedy_generate

HUMANEVAL_INSTRUCTION = "Complete the following python code:\n{prompt}"
MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}"
)
_PLUS_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")  # EvalPlus rows
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
    missing = [key for key in (*_PLUS_FIELDS, "assertion") if key not in row]
    if missing:
        raise KeyError(f"MBPP+ row lacks field {missing[0]!r}; expected fields {', '.join((*_PLUS_FIELDS, 'assertion'))}")
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


# ------------------------------------------------------------------------------------------------ truncation
_FENCE_OPEN = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*(?:\n|$)", re.IGNORECASE)
_TOP_LEVEL_CODE = ("def ", "async def ", "class ", "import ", "from ", "@")
# Top-level lines that end the code wherever they stand: driver code, never part of a solution.
_ALWAYS_STOP = re.compile(r"(if\s+__name__\b|print\s*\(|print\s|assert\b|#\s*(example|test|usage|driver))", re.I)
# Top-level lines that end the code once the function's body has ended (a superset of the Codex stop
# sequences "\ndef", "\nclass", "\nif", "\nprint", "\n#").
_AFTER_FUNCTION_STOP = re.compile(r"(def\s|async\s+def\s|class\s|@|if\b|for\b|while\b|with\b|try\b|#)")


def extract_code(generation: str, entry_point: str | None = None) -> str:
    """The code to run from a generation (the one truncation rule of this family).

    1. Markdown: the code inside the first ```` ```python ```` fence (or bare ```` ``` ```` one that starts the
       text or is paired), up to the closing "\\n```"; without one, everything up to the first "\\n```".
    2. Body mode (the first code line is indented by a tab or 4+ spaces, or by 1-3 spaces and is no
       def/class/import: the model continued the HumanEval prompt's function): kept as is (one stray leading
       space from the Alpaca separator is dropped), up to the first top-level line, where the body has ended.
    3. Program mode (a whole program; a leading space before its first line is dropped): cut at the first
       top-level ``if __name__``, ``print``, ``assert`` or "# Example/# Test" line anywhere, and, once the body of ``def <entry_point>`` has ended,
       at the first top-level def/class/decorator/if/for/while/with/try/comment or any line that uses the
       function's name (a call of it). Imports and helpers before the function, and plain top-level lines after
       it, are kept; with no ``entry_point`` (or none defined in the code) only the first rule cuts.
    """
    text = generation.replace("\r\n", "\n").replace("\r", "\n")
    opened = _FENCE_OPEN.search(text)
    # An untagged fence opens a block when it comes first or the fences pair up; a lone one closes a body.
    if opened and (opened.group(0).strip() != "```" or not text[: opened.start()].strip() or text.count("```") % 2 == 0):
        text = text[opened.end() :]
    closed = text.find("\n```") if not text.startswith("```") else 0
    if closed >= 0:
        text = text[:closed]
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return ""
    first = lines[0]
    indent = len(first) - len(first.lstrip())
    if first.startswith("\t") or indent >= 4 or (indent and not first.lstrip().startswith(_TOP_LEVEL_CODE)):
        return _body_mode(lines)
    return _program_mode([first.lstrip(), *lines[1:]], entry_point)


def _is_top_level(line: str) -> bool:
    return bool(line.strip()) and not line[0].isspace()


def _body_mode(lines: list[str]) -> str:
    first = lines[0]
    indent = len(first) - len(first.lstrip(" "))
    if first.startswith(" ") and indent % 4 == 1:  # " " + "    return x": the separator after "### Response:"
        lines = [first[1:], *lines[1:]]
    kept = []
    for line in lines:
        if _is_top_level(line):
            break
        kept.append(line)
    code = "\n".join(kept).rstrip()
    return code + "\n" if code else ""


def _program_mode(lines: list[str], entry_point: str | None) -> str:
    defines = re.compile(r"(async\s+)?def\s+" + re.escape(entry_point) + r"\s*\(") if entry_point else None
    uses = re.compile(r"\b" + re.escape(entry_point) + r"\b") if entry_point else None
    kept, state = [], "before"  # before the function, inside it, after its body
    for line in lines:
        if _is_top_level(line):
            if _ALWAYS_STOP.match(line):
                break
            if state == "inside":
                state = "after"
            if state == "after" and (_AFTER_FUNCTION_STOP.match(line) or (uses and uses.search(line))):
                break
            if state == "before" and defines is not None and defines.match(line):
                state = "inside"
        kept.append(line)
    code = "\n".join(kept).rstrip()
    return code + "\n" if code else ""


# --------------------------------------------------------------------------------------------- EvalPlus data

def read_jsonl_gz(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a gzip-compressed JSON Lines file (HumanEval.jsonl.gz, HumanEvalPlus.jsonl.gz) and their lines."""
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: not a readable gzip file ({error}); expected gzip-compressed JSON Lines") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path} line {line} (decompressed): not valid UTF-8 ({error.reason})") from None
    numbered = _jsonl_rows(path, text.removeprefix("\ufeff"))
    return [row for _, row in numbered], [f"file {path} line {line}" for line, _ in numbered]


def load_plus(path: str | Path, benchmark: str) -> dict[str, dict]:
    """EvalPlus problems by task id, inputs deserialised as EvalPlus does (MBPP+: tuples, sets, complex ...)."""
    from astra.data.sources import read_rows_with_lines

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"task.eval.plus_file={str(path)!r} does not exist (HumanEvalPlus / MbppPlus jsonl[.gz])")
    if path.suffix == ".gz":
        rows, locations = read_jsonl_gz(path)
    else:
        numbered = read_rows_with_lines(path)
        rows, locations = [row for _, row in numbered], [f"file {path} line {line}" for line, _ in numbered]
    problems = {}
    for row, location in zip(rows, locations, strict=True):
        missing = [key for key in _PLUS_FIELDS if key not in row]
        if missing:
            raise ValueError(f"{location}: EvalPlus row lacks {', '.join(map(repr, missing))}; expected {', '.join(_PLUS_FIELDS)}")
        problems[str(row["task_id"])] = row
    return problems


def deserialized(plus: dict, benchmark: str) -> dict:
    """A copy of an EvalPlus row with its inputs as EvalPlus passes them (MBPP+: tuples, sets, complex ...)."""
    if benchmark != "mbpp":
        return plus
    try:
        from evalplus.data.mbpp import mbpp_deserialize_inputs
    except ImportError as error:
        raise ImportError(f"the MBPP+ plus tests need the evalplus package ({error})") from None
    task_id = str(plus["task_id"])
    return {**plus, "base_input": mbpp_deserialize_inputs(task_id, plus["base_input"]),
            "plus_input": mbpp_deserialize_inputs(task_id, plus["plus_input"])}  # fmt: skip


def plus_task_id(problem: dict) -> str:
    """The EvalPlus id of a base problem: HumanEval/N is shared; MBPP task N is Mbpp/N."""
    task_id = str(problem["task_id"])
    return f"Mbpp/{task_id}" if problem["benchmark"] == "mbpp" and not task_id.startswith("Mbpp/") else task_id


_PLUS_HARNESS = '''
import base64, copy, math, pickle
{oracles}
_INPUTS = pickle.loads(base64.b64decode({inputs!r}))
_reference = {{}}
exec(compile({reference!r}, "<canonical solution>", "exec"), _reference)
_expected = [_reference[{reference_entry!r}](*copy.deepcopy(_args)) for _args in _INPUTS]
if {output_not_none!r}:
    _expected = [_value is not None for _value in _expected]
del _reference
_candidate = {{}}
exec(compile({candidate!r}, "<completion>", "exec"), _candidate)
_function = _candidate[{candidate_entry!r}]


def _floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x))


def _close(out, exp, atol):  # numpy.allclose(out, exp, rtol=1e-07, atol=atol), numpy-free
    if isinstance(exp, (list, tuple)):
        return isinstance(out, (list, tuple)) and len(out) == len(exp) and all(_close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(exp, (int, float, complex)) and isinstance(out, (int, float, complex)):
        return abs(out - exp) <= atol + 1e-07 * abs(exp)
    return False


_atol = {atol!r}
for _index, (_args, _exp) in enumerate(zip(_INPUTS, _expected)):
    _out = _function(*_args)
    _match = _out == _exp
    _entry = {reference_entry!r}
    if {dataset!r} == "mbpp":
        if _entry == "are_equivalent":
            _match = True
        elif _entry == "sum_div":
            _match = _match or _out == 0
        elif _entry == "surface_Area":
            _match = _match or abs(_out - _surface_Area(*_args)) <= _atol
        elif _entry == "digit_distance_nums":
            _match = _match or _out == _digit_distance_nums(*_args)
        elif _entry in {set_eq!r}:
            _match = set(_out) == set(_exp)
        elif _entry in {not_none!r}:
            _match = _out == _exp if isinstance(_out, bool) else _exp == (_out is not None)
    if {dataset!r} == "humaneval" and _entry == "find_zero":
        assert abs(_poly(*_args, _out)) <= _atol, "input #%d: find_zero result is not a zero" % _index
        continue
    if _atol == 0 and _floats(_exp):
        _atol = 1e-6
    if not _match and _atol != 0:
        _match = type(_out) == type(_exp) and _close(_out, _exp, _atol)
    if not _match:
        raise AssertionError("EvalPlus input #%d %.300r: expected %.300r, got %.300r" % (_index, _args, _exp, _out))
'''


def plus_program(plus: dict, completion: str, dataset: str, candidate_entry: str | None = None) -> str:
    """A stdlib-only program that checks ``completion`` on EvalPlus's base + plus inputs, for run_program.

    It mirrors evalplus 0.3.1 (``evaluate.get_groundtruth`` + ``eval.unsafe_execute``): expected outputs from
    the canonical solution (computed first, before any model code runs), exact match, EvalPlus's special
    oracles (taken from ``evalplus.eval._special_oracle``), float tolerance ``atol`` (1e-6 for float outputs).
    Differences: one time limit for the whole program (``task.eval.plus_timeout_s``) instead of EvalPlus's
    per-input limits, and the candidate is called by the name the prompt asked for (MBPP+ renamed a few)."""
    from evalplus.eval import _special_oracle as oracle

    sources = [inspect.getsource(f) for f in (oracle._poly, oracle._surface_Area, oracle._digit_distance_nums)]
    inputs = base64.b64encode(pickle.dumps(list(plus["base_input"]) + list(plus["plus_input"]))).decode("ascii")
    prompt, solution = plus["prompt"], plus["canonical_solution"]
    reference = prompt + ("" if prompt.endswith("\n") or solution.startswith("\n") else "\n") + solution
    candidate = plus["prompt"] + completion if dataset == "humaneval" else completion
    return _PLUS_HARNESS.format(
        oracles="\n".join(sources), inputs=inputs, reference=reference, candidate=candidate,
        reference_entry=plus["entry_point"], candidate_entry=candidate_entry or plus["entry_point"],
        output_not_none=dataset == "mbpp" and plus["entry_point"] in oracle.MBPP_OUTPUT_NOT_NONE_TASKS,
        atol=plus["atol"] or 0, dataset=dataset, set_eq=list(oracle.MBPP_OUTPUT_SET_EQ_TASKS),
        not_none=list(oracle.MBPP_OUTPUT_NOT_NONE_TASKS),
    )  # fmt: skip


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
        check_opt_in(execution_policy(task_cfg))  # a run without both switches fails before training, not after

    def read_file(self, path: Path):
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
                                      task_cfg.eval.batch_size, settings.device)  # fmt: skip
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
        return {"metrics": metrics, "samples": samples}
