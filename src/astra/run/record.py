"""What one run records about itself, assembled into its result file (written by :mod:`astra.run.results`).

Statuses: ``ok`` (every phase finished), ``failed`` (an error; ``error`` holds it, a diverged loss included),
``interrupted`` (SIGINT / SIGTERM; ``interruption`` holds the signal and the phase). A resumed run replaces
its own result file and keeps the earlier attempts under ``attempts``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from astra.run import console, hydra_support, results, steps
from astra.run.interrupts import RunInterrupted, interruption_guard
from astra.run.learning_rate import learning_rate_source
from astra.training.module import TrainingDivergedError

log = logging.getLogger(__name__)


class Stopwatch:
    """Wall time per named phase; ``phase`` is the phase entered last (what an interruption reports)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.phase = "setup"

    def __call__(self, name: str):
        watch = self

        class _Phase:
            def __enter__(self):
                watch.phase, self.start = name, time.perf_counter()

            def __exit__(self, *exc):
                watch.seconds[name] = watch.seconds.get(name, 0.0) + time.perf_counter() - self.start

        return _Phase()


def peak_memory_bytes(device: torch.device | None) -> dict[str, int | None]:
    gpu = torch.cuda.max_memory_allocated() if device is not None and device.type == "cuda" else None
    # ru_maxrss is in KiB on Linux.
    return {"gpu_max_allocated": gpu, "cpu_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class RunRecord:
    def __init__(self, cfg: DictConfig, run_dir: Path, overrides: list[str]):
        self.cfg, self.run_dir, self.overrides = cfg, Path(run_dir), list(overrides)
        self.watch = Stopwatch()
        self.created = results.now_iso()
        # Provenance as of the process start: a grid that runs while commits land must record the code that ran
        # (imported when the process started), not the checkout's state when this cell began or ended.
        self.git_at_start = results.git_state_at_process_start()
        self.config_root = hydra_support.config_root()
        self.status, self.error, self.interruption = "ok", None, None
        self.device: torch.device | None = None
        self.resume_from: Path | None = None
        self.facts: dict[str, Any] = {"metrics": {}, "train_loss": results.loss_summary([]), "parameters": None,
                                      "warnings": []}  # fmt: skip
        # What the runner built so far; read when the block is left, whatever the outcome.
        self.module, self.trainer, self.loggers, self.callbacks = None, None, [], []
        self.main_process = steps.is_main_process()  # only global rank 0 writes the result file
        self.written: list[Path] = []
        self._guard_context = None

    def __enter__(self) -> RunRecord:
        self._guard_context = interruption_guard()
        self.guard = self._guard_context.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        diverged = None
        try:
            if isinstance(exc, RunInterrupted):
                self.interrupted(exc)
            elif exc is not None:  # the result file records the failure; the error still propagates
                # A NaN loss can surface first as another error (an SVD in telemetry, a NaN in generation): name it.
                diverged = exc if isinstance(exc, TrainingDivergedError) else (
                    self.module.first_divergence() if self.module is not None else None)
                self.failed(exc, diverged)
                log.debug("run failed: %s", self.error, exc_info=(exc_type, exc, tb))  # the job's log file
                with contextlib.suppress(AttributeError):
                    exc.astra_phase = self.watch.phase  # the entry prints a setup error as one line
        finally:
            self.guard.shield()  # a second signal must not cut the result file short
            try:
                self._collect_and_write()
            finally:
                self._guard_context.__exit__(None, None, None)
        if diverged is not None and diverged is not exc:
            raise diverged from exc
        return False  # never swallow: the caller sees the run's own exception

    def _collect_and_write(self) -> None:
        if self.module is not None:
            self.facts["train_loss"] = results.loss_summary(self.module.loss_history())
            self.facts["resumed_from_step"] = self.module.resumed_from_step
        if self.trainer is not None:
            self.facts["steps_done"] = int(self.trainer.global_step)
        self.facts["telemetry"] = steps.telemetry_summary(self.callbacks)
        self.facts["series"] = steps.telemetry_series(  # for the report's figures (never read from W&B)
            self.callbacks, self.facts["train_loss"]["per_step"], self.cfg.trainer.lightning.accumulate_grad_batches
        )
        steps.finish_telemetry(self.loggers, failed=self.status != "ok", summary=self.facts["telemetry"])
        if not self.main_process:
            return
        try:
            self.written = self.write(Path(self.cfg.paths.results_dir))
        except Exception:
            if self.status == "ok":
                raise
            log.exception("could not write the result file; the run's own error follows")
        console.summary(self)

    def interrupted(self, exc: Any) -> None:
        self.status, self.error = "interrupted", describe(exc)
        self.interruption = {"signal": exc.signal_name, "phase": self.watch.phase}

    def failed(self, exc: BaseException, diverged: BaseException | None) -> None:
        self.status = "failed"
        self.error = describe(diverged) if diverged is not None else describe(exc)
        if diverged is not None and diverged is not exc:
            self.error += f" (then: {describe(exc)})"

    def to_dict(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "method": cfg.method.name,
            "task": cfg.task.name,
            "model": cfg.model.name,
            "seed": cfg.seed,
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "learning_rate": cfg.optim.lr,
            "learning_rate_source": learning_rate_source(cfg),  # model.lr x method.lr_scale, or optim.lr given
            "experiment": cfg.experiment_name,
            "config": OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False),
            "overrides": self.overrides,
            "command": results.command_line(),
            "wall_time_s": {**{k: round(v, 3) for k, v in self.watch.seconds.items()},
                            "total": round(time.perf_counter() - self.watch.started, 3)},
            "peak_memory_bytes": peak_memory_bytes(self.device),
            **self.provenance(),
            "versions": results.package_versions(),
            "status": self.status,
            "error": self.error,
            "interruption": self.interruption,
            "created": self.created,
            "run_dir": str(self.run_dir),
            "resumed_from_step": None,
            **self.facts,
        }

    def provenance(self) -> dict[str, Any]:
        """``git``: the package's checkout at process start; ``git_at_write`` when it changed during the run;
        ``git_configs``: the checkout the configs came from, when that is another one (a clone or worktree sharing
        this checkout's editable install)."""
        facts: dict[str, Any] = {"git": self.git_at_start}
        now = results.git_state()
        if now != self.git_at_start:
            facts["git_at_write"] = now
        if self.config_root is not None:
            configs = results.git_state(self.config_root)
            if configs.get("checkout") != self.git_at_start.get("checkout") or configs.get("checkout") is None:
                facts["git_configs"] = {**configs, "config_dir": str(self.config_root)}
        return facts

    def write(self, results_root: Path) -> list[Path]:
        """A new run writes its result file (and the copy under ``results_root``); a resumed run replaces its
        own, keeping what the earlier attempts recorded under ``attempts``."""
        result = self.to_dict()
        previous_file = self.run_dir / "result.json"
        if self.resume_from is None or not previous_file.is_file():
            return results.write_result(result, self.run_dir, results_root)
        previous = json.loads(previous_file.read_text(encoding="utf-8"))
        attempt = {key: previous.get(key) for key in ("status", "error", "interruption", "created", "steps_done", "command")}
        result["attempts"] = [*previous.get("attempts", []), attempt]
        result["created"] = previous.get("created", result["created"])
        return results.replace_result(result, self.run_dir, results.result_copy_path(self.run_dir))
