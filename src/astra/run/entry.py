"""What ``run.py`` does around the run: the resume command line, the exit code, the multirun's closing report."""

from __future__ import annotations

import sys
from collections.abc import Callable

from omegaconf import DictConfig

from astra.run import console, hydra_support, results, runner
from astra.run.checkpointing import resume_argv
from astra.run.interrupts import RunInterrupted


def prepare_argv(argv: list[str]) -> list[str]:
    """``resume=<run_dir>`` becomes the run's own overrides (see :func:`astra.run.checkpointing.resume_argv`); the
    checkout's git state is taken now, as the code this process runs (every result file's ``git`` block)."""
    results.git_state_at_process_start()
    return resume_argv(argv)


def run_job(cfg: DictConfig) -> float:
    """One Hydra job: the run's primary metric; a failure is raised in a single run (exit 1), and returned as NaN in
    a multirun so the other jobs still run (the closing report lists every failed job and fails the command)."""
    try:
        return runner.train(cfg)
    except RunInterrupted as exc:
        # 130 / 143, as a shell reports a death by SIGINT / SIGTERM, so schedulers see a preempted job.
        sys.exit(exc.exit_code)
    except Exception as exc:
        if hydra_support.in_multirun():
            return float("nan")
        if is_input_error(exc) and not console.verbose_requested(sys.argv):
            # The summary block above named the error: one clean message, no traceback (hydra.verbose=true or
            # ASTRA_VERBOSE=1 shows it).
            print("(an input error, found before the model loaded; the traceback: add hydra.verbose=true)",
                  file=sys.stderr)  # fmt: skip
            sys.exit(1)
        raise


def is_input_error(exc: BaseException) -> bool:
    """A bad setting or a missing / wrong file, refused in the setup phase, before any model was loaded."""
    return getattr(exc, "astra_phase", None) == "setup" and isinstance(exc, (ValueError, OSError, PermissionError))


def finish(main: Callable[[], object]) -> int:
    """Run the Hydra app and return the exit code: 1 when a multirun had failed jobs (listed on stderr)."""
    main()
    if hydra_support.FAILED_JOBS_REPORT:
        print(hydra_support.FAILED_JOBS_REPORT, file=sys.stderr)
        return 1
    return 0
