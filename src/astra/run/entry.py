"""What ``run.py`` does around the run: the resume command line, the exit code, the multirun's closing report."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import DictConfig

from astra.run import hydra_support, runner
from astra.run.checkpointing import resume_argv
from astra.run.interrupts import RunInterrupted


def prepare_argv(argv: list[str]) -> list[str]:
    """``resume=<run_dir>`` becomes the run's own overrides (see :func:`astra.run.checkpointing.resume_argv`)."""
    return resume_argv(argv)


def run_job(cfg: DictConfig) -> float:
    """One Hydra job: the run's primary metric; a failure is raised in a single run (exit 1), and returned as NaN in
    a multirun so the other jobs still run (the closing report lists every failed job and fails the command)."""
    try:
        return runner.train(cfg)
    except RunInterrupted as exc:
        # 130 / 143, as a shell reports a death by SIGINT / SIGTERM, so schedulers see a preempted job.
        sys.exit(exc.exit_code)
    except Exception:
        if not hydra_support.in_multirun():
            raise
        return float("nan")


def finish(main: Callable[[], object]) -> int:
    """Run the Hydra app and return the exit code: 1 when a multirun had failed jobs (listed on stderr)."""
    main()
    if hydra_support.FAILED_JOBS_REPORT:
        print(hydra_support.FAILED_JOBS_REPORT, file=sys.stderr)
        return 1
    return 0
