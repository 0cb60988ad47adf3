"""Running a comparison's cells: each is an ordinary run (``astra.run.runner.train``) composed exactly as
``python run.py experiment=<name> method=<arm> optim.lr=<rate> seed=<seed> experiment_name=<name>_<phase> ...`` would
compose it, run in this process one after another. A cell whose ``ok`` result exists (same resolved config: the
skip-existing fingerprint) is read, not run again, so an interrupted comparison resumes where it stopped."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astra.compare.protocol import UNTRAINED, Protocol, compose
from astra.compare.selection import rate_key
from astra.run import results, runner, skip_existing


@dataclass(frozen=True)
class Cell:
    phase: str  # select / test
    arm: str
    rate: float | None  # None: the untrained row (nothing trains; its rate is unused)
    seed: int

    def overrides(self, protocol: Protocol) -> list[str]:
        phase_overrides = protocol.select_overrides if self.phase == "select" else protocol.test_overrides
        rate = [] if self.rate is None else [f"optim.lr={self.rate!r}"]
        return [f"experiment={protocol.experiment}", *protocol.user_overrides, *phase_overrides,
                f"experiment_name={protocol.phase_name(self.phase)}", f"method={self.arm}", *rate,
                f"seed={self.seed}"]  # fmt: skip

    def command(self, protocol: Protocol) -> str:
        """The equivalent ``run.py`` command line (for the log, and for running the cell elsewhere)."""
        return "python run.py " + " ".join(self.overrides(protocol))

    def label(self) -> str:
        rate = "" if self.rate is None else f"lr {rate_key(self.rate):<8}"
        return f"{self.phase:<6} {self.arm:<13} {rate:<11} seed {self.seed}"


class CellFailed(RuntimeError):
    pass


def cells_for(phase: str, arms_rates: dict[str, list[float]], seeds: list[int], untrained: bool) -> list[Cell]:
    """Every cell of a phase, seed-major (an interrupted phase has every arm at its first seed before any at the
    second), the untrained row first."""
    cells = []
    for seed in seeds:
        if untrained:
            cells.append(Cell(phase, UNTRAINED, None, seed))
        for arm, rates in arms_rates.items():
            cells += [Cell(phase, arm, rate, seed) for rate in rates]
    return cells


def run_cell(cell: Cell, protocol: Protocol, log_dir: Path, read_only: bool = False) -> tuple[dict[str, Any], bool]:
    """(the cell's ``ok`` result, whether it ran now). Its console output goes to ``console.txt`` in its run
    directory; a failed cell raises :class:`CellFailed` naming that file and its result."""
    run_dir = (
        log_dir
        / cell.phase
        / f"{cell.arm}-{rate_key(cell.rate) if cell.rate else 'na'}-seed{cell.seed}-{time.strftime('%Y%m%dT%H%M%S')}"
    )
    cfg = compose([*cell.overrides(protocol), f"paths.output_dir={run_dir}"])
    folder = results.experiment_dir(cfg.paths.results_dir, cfg.experiment_name)
    fingerprint = skip_existing.fingerprint_of(cfg)
    existing = skip_existing.find_ok_result(folder, fingerprint)
    if existing is not None:
        return existing, False
    if read_only:
        raise CellFailed(f"{cell.label()} has no ok result in {folder}: run the test phase first (--phase test)")
    run_dir.mkdir(parents=True, exist_ok=True)
    error = None
    with open(run_dir / "console.txt", "w", encoding="utf-8") as console_file:
        with contextlib.redirect_stdout(console_file), contextlib.redirect_stderr(console_file):
            try:
                runner.train(cfg, overrides=cell.overrides(protocol))
            except Exception as exc:  # the result file says failed; the comparison reports it and stops
                error = exc
    found = skip_existing.find_ok_result(folder, fingerprint)
    if found is None:
        raise CellFailed(f"{cell.label()} failed ({type(error).__name__ if error else 'no ok result'}: {error}); "
                         f"its output: {run_dir / 'console.txt'}; rerun the comparison to retry it")  # fmt: skip
    return found, True
