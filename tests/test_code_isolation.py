"""Hostile generated programs against the code-execution sandbox (issue 22, item 1).

Every program here calls the ``posix`` module directly, so the in-program guard (which replaces ``os.kill``,
``os.fork``, ...) is out of the way and what is measured is the OS isolation. Where a check could pass for the
wrong reason it has a control that shows the check can fail.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import time
from pathlib import Path

import pytest

from astra.tasks import code_execution as ce
from astra.tasks.code_execution import ExecutionPolicy, check_humaneval, run_program

REPO = Path(__file__).resolve().parents[1]


def _isolation() -> str:
    return ce.isolation().name


pytestmark = pytest.mark.skipif(
    _isolation() == "none",
    reason="no namespace isolation works on this machine (unshare --pid --net --mount and bwrap both failed the "
    "probe); the sandbox guarantees tested here do not hold, results say isolation: none",
)


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    return ExecutionPolicy(allowed=True, timeout_s=10, memory_mb=256, max_processes=16)


def _processes_with(marker: str) -> list[int]:
    """PIDs (host view) whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _detail(result) -> str:
    match = re.search(r"RESULT=(.*)", result.detail)
    assert match, result
    return match.group(1)


def test_correct_program_passes_and_raising_program_fails(policy):
    result = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\n", policy)
    assert result.passed and result.isolation == _isolation()
    raising = run_program("def f(x):\n    raise ValueError('no')\nf(1)\n", policy)
    assert raising.status == "failed" and "ValueError: no" in raising.detail


def test_killing_the_parent_and_the_trainer_does_not_reach_the_test_process(policy):
    trainer = os.getpid()
    source = (
        "import os, posix, signal\nout = []\n"
        f"for pid in (os.getppid(), 1, {trainer}, -1):\n"
        "    try:\n        posix.kill(pid, signal.SIGKILL)\n        out.append((pid, 'sent'))\n"
        "    except OSError as error:\n        out.append((pid, error.errno))\n"
        "raise SystemExit('RESULT=' + repr((os.getppid(), out)))\n"
    )
    result = run_program(source, policy)
    # We are still here (the pytest process is the trainer); the program's parent is the supervisor, PID 1.
    ppid, attempts = eval(_detail(result))
    assert ppid == 1, result
    # PID 1 (its parent) refuses it (another uid; init ignores SIGKILL from inside anyway); the trainer's PID does
    # not exist in the namespace; kill(-1) finds nothing it may signal.
    assert all(outcome in (errno.EPERM, errno.ESRCH) for _, outcome in attempts), attempts
    assert os.getpid() == trainer and result.status == "failed"
    assert run_program("assert True\n", policy).passed  # and the next sample runs normally


@pytest.mark.parametrize("parent", ["exits", "times out"])
def test_setsid_grandchild_dies_with_the_sample(policy, parent):
    marker = f"astra-survivor-{secrets.token_hex(6)}"
    # Double fork + setsid: the classic daemon, out of the program's process group and session. If it survived,
    # it would sleep past the limit and then try to write a file; it is visible from here by its command line.
    target = REPO / f".{marker}"
    source = (
        "import posix, time\n"
        "if posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
        f"        posix.execv('/bin/sh', ['sh', '-c', 'sleep 3; echo alive > {target}', '{marker}'])\n"
        "    posix._exit(0)\n"
        "time.sleep(0.5)\n" + ("time.sleep(60)\n" if parent == "times out" else "")
    )
    policy.timeout_s = 2 if parent == "times out" else 10
    result = run_program(source, policy)
    assert result.status == ("timeout" if parent == "times out" else "passed"), result
    time.sleep(0.2)
    assert _processes_with(marker) == [], "a process of the sample outlived it"
    time.sleep(3.5)  # past the moment it would have written
    assert not target.exists()


def test_survivor_check_detects_a_survivor_without_isolation(policy, monkeypatch):
    """Control for the test above: without namespaces the same daemon does survive, and is seen."""
    monkeypatch.setattr(ce, "isolation", lambda: ce.NO_ISOLATION)
    marker = f"astra-survivor-{secrets.token_hex(6)}"
    source = (
        "import posix, time\n"
        "if posix.fork() == 0:\n    posix.setsid()\n    if posix.fork() == 0:\n"
        f"        posix.execv('/bin/sh', ['sh', '-c', 'sleep 5', '{marker}'])\n"
        "    posix._exit(0)\n"
        "time.sleep(0.5)\n"
    )
    result = run_program(source, policy)
    survivors = _processes_with(marker)
    for pid in survivors:  # ours: started by this test
        os.kill(pid, 9)
    assert result.isolation == "none" and survivors


def test_fork_bomb_is_limited(policy):
    source = (
        "import posix, time\nforked = 0\n"
        "for _ in range(50):\n"
        "    try:\n        pid = posix.fork()\n    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(3)\n        posix._exit(0)\n"
        "    forked += 1\n"
        "raise SystemExit('RESULT=' + str(forked))\n"
    )
    result = run_program(source, policy)
    forked = int(_detail(result))
    assert 0 < forked < policy.max_processes, result  # RLIMIT_NPROC of the program's own uid (itself counts)


def test_system_runs_contained(policy):
    trainer = os.getpid()
    source = (
        "import posix\n"
        f'code = posix.system(\'id -u > out.txt; ls /proc | grep -c "^[0-9]" >> out.txt; kill -9 {trainer}; '
        "touch /etc/astra-isolation-probe 2>> out.txt; echo $? >> out.txt')\n"
        "raise SystemExit('RESULT=' + repr(open('out.txt').read().splitlines()))\n"
    )
    result = run_program(source, policy)
    uid, processes, touch, status = eval(_detail(result))
    assert not Path("/etc/astra-isolation-probe").exists()
    assert ("Read-only file system" in touch or "Permission denied" in touch) and status == "1"
    assert int(processes) < 10  # the namespace's processes only: supervisor, program, sh, ls, grep
    if os.geteuid() == 0 and _isolation() == "unshare-pid-net":
        assert int(uid) != 0  # a fresh unprivileged uid, so RLIMIT_NPROC applies and root's files are not its own


def test_writes_and_unlinks_outside_the_workdir_do_not_land(policy, tmp_path):
    # Two sentinels: one under /tmp (pytest's tmp_path, hidden by the private /tmp) and one outside it, in a
    # world-writable directory next to the tests, which only the read-only mount protects.
    outside = Path(os.path.realpath(REPO)) / f".astra-isolation-{secrets.token_hex(4)}"
    outside.mkdir()
    try:
        outside.chmod(0o777)
        sentinels = [tmp_path / "sentinel.txt", outside / "sentinel.txt"]
        for sentinel in sentinels:
            sentinel.write_text("keep")
            sentinel.chmod(0o666)
        source = "import posix\nerrors = []\n"
        for sentinel in sentinels:
            for call in (
                f"posix.unlink({str(sentinel)!r})",
                f"open({str(sentinel)!r}, 'w').write('gone')",
                f"posix.rename({str(sentinel)!r}, {str(sentinel)!r} + '.moved')",
                f"posix.chmod({str(sentinel)!r}, 0)",
                f"open({str(sentinel.parent / 'new')!r}, 'w')",
            ):
                source += f"try:\n    {call}\nexcept OSError as error:\n    errors.append(error.errno)\n"
        source += "raise SystemExit('RESULT=' + repr(errors))\n"
        result = run_program(source, policy)
        errors = eval(_detail(result))
        assert len(errors) == 10, result  # every call failed (ENOENT in the private /tmp, EROFS outside)
        for sentinel in sentinels:
            assert sentinel.read_text() == "keep" and stat.S_IMODE(sentinel.stat().st_mode) == 0o666
            assert sorted(p.name for p in sentinel.parent.iterdir()) == ["sentinel.txt"]
    finally:
        for path in sorted(outside.iterdir(), reverse=True):
            path.unlink()
        outside.rmdir()


def test_reading_its_source_and_printing_the_verdict_is_not_a_pass(policy):
    problem = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}
    assert check_humaneval(problem, "    return a + b\n", policy).passed
    # A wrong answer that prints its own source, everything of the supervisor it can read, writes a fake
    # verdict to every descriptor it has or can open, and exits with status 0 before the tests run.
    cheat = (
        "    import os, posix, sys\n"
        "    sys.stdout.write(open(__file__).read())\n"
        "    for name in ('cmdline', 'environ'):\n"
        "        try:\n            sys.stdout.write(str(open('/proc/1/' + name, 'rb').read()))\n"
        "        except OSError:\n            pass\n"
        '    fake = b\'{"code": 0, "done": true}\'\n'
        "    for fd in range(3, 256):\n"
        "        try:\n            posix.write(fd, fake)\n        except OSError:\n            pass\n"
        "    for name in os.listdir('/proc/1/fd') if os.access('/proc/1/fd', os.R_OK) else []:\n"
        "        try:\n            posix.write(posix.open('/proc/1/fd/' + name, posix.O_WRONLY), fake)\n"
        "        except OSError:\n            pass\n"
        "    sys.stdout.flush()\n"
        "    posix._exit(0)\n"
    )
    result = check_humaneval(problem, cheat, policy)
    assert result.status == "failed", result
    early = run_program("import sys\nprint('ASTRA-DONE passed')\nsys.exit(0)\nassert False\n", policy)
    assert early.status == "failed"


def test_supervisor_descriptors_are_out_of_reach(policy):
    source = (
        "import os\nout = []\n"
        "for path in ('/proc/1/fd', '/proc/1/mem', '/proc/1/environ'):\n"
        "    try:\n        out.append(os.listdir(path) if path.endswith('fd') else open(path, 'rb').read(1))\n"
        "    except OSError as error:\n        out.append(error.errno)\n"
        "out.append(sorted(os.listdir('/proc/self/fd')))\n"
        "raise SystemExit('RESULT=' + repr(out))\n"
    )
    fd_list, mem, environ, own = eval(_detail(run_program(source, policy)))
    assert fd_list == mem == environ == 13  # EACCES: another uid / non-dumpable, no CAP_SYS_PTRACE
    assert len(own) <= 6  # 0, 1, 2, the token and done pipes, and the listing's own descriptor


def test_no_network(policy):
    source = (
        "import _socket\ns = _socket.socket()\ns.settimeout(2)\n"
        "try:\n    s.connect(('1.1.1.1', 53))\nexcept OSError as error:\n    raise SystemExit('RESULT=' + str(error.errno))\n"
    )
    result = run_program(source, policy)
    assert result.status == "failed" and _detail(result).isdigit()
