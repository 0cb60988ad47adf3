"""EvalPlus data (HumanEval+ / MBPP+ rows with base and plus inputs) and the stdlib-only program that checks a
completion on them the way EvalPlus 0.3.1 does, run through ``code_execution`` (never by forking the training
process, as EvalPlus's own runner does)."""

from __future__ import annotations

import base64
import gzip
import inspect
import pickle
import zlib
from pathlib import Path

from astra.data.sources import jsonl_rows, require_file

PLUS_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input", "atol")  # EvalPlus rows

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
    numbered = jsonl_rows(path, text.removeprefix("\ufeff"))
    return [row for _, row in numbered], [f"file {path} line {line}" for line, _ in numbered]


def load_plus(path: str | Path, benchmark: str) -> dict[str, dict]:
    """EvalPlus problems by task id, inputs deserialised as EvalPlus does (MBPP+: tuples, sets, complex ...)."""
    from astra.data.sources import read_rows_with_lines

    path = Path(path).expanduser()
    require_file(path, "task.eval.plus_file (HumanEvalPlus / MbppPlus jsonl[.gz])")
    if path.suffix == ".gz":
        rows, locations = read_jsonl_gz(path)
    else:
        numbered = read_rows_with_lines(path)
        rows, locations = [row for _, row in numbered], [f"file {path} line {line}" for line, _ in numbered]
    problems = {}
    for row, location in zip(rows, locations, strict=True):
        missing = [key for key in PLUS_FIELDS if key not in row]
        if missing:
            raise ValueError(f"{location}: EvalPlus row lacks {', '.join(map(repr, missing))}; expected {', '.join(PLUS_FIELDS)}")
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
