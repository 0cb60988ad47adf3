"""The console is part of the interface: the main command prints no warning line and ends with the summary block."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from astra.run import console

ROOT = Path(__file__).resolve().parents[1]


def test_main_command_prints_no_warning_and_ends_with_the_summary(tmp_path):
    """Exactly the README's main command (its outputs redirected into the temp dir through ASTRA_ROOT)."""
    env = {**os.environ, "ASTRA_ROOT": str(tmp_path)}
    env.pop(console.VERBOSE_ENV, None)
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "method=astra", "task=gsm8k"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if re.search(r"warn", line, re.IGNORECASE)]
    assert not warnings, "warning lines in the main command's output:\n" + "\n".join(warnings)
    block = done.stdout[done.stdout.index("── run summary"):].splitlines()  # the last thing on stdout
    labels = [line.split()[0] for line in block[1:]]
    assert labels == ["status", "method", "accuracy", "training", "forgetting", "wall", "result"], block
    assert block[1].split() == ["status", "ok"]
    assert re.fullmatch(r"accuracy +\d\.\d{3} on 100 items", block[3]), block[3]
    assert re.match(r"training +\d+ optimizer steps at lr ", block[4]), block[4]
    assert all(phase in block[6] for phase in ("setup", "init", "train", "eval", "total")), block[6]
    result = Path(block[7].split(maxsplit=1)[1])
    assert (tmp_path / result if not result.is_absolute() else result).is_file()
    assert len(output.splitlines()) < 40, f"{len(output.splitlines())} lines: the console should be a few per phase"


def test_verbose_brings_third_party_output_back(monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.verbose_requested([]) and not console.quiet_third_party([])
    monkeypatch.delenv(console.VERBOSE_ENV)
    assert console.verbose_requested(["hydra.verbose=true"]) and not console.verbose_requested(["hydra.verbose=false"])
