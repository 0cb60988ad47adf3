"""Hydra glue: a unique run-directory suffix and the multirun's closing report of every failed job.

Import this module before ``@hydra.main`` composes the config (run.py does), so ``${astra_uid:}`` resolves.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from astra.run.learning_rate import SCALED_RESOLVER, scaled

log = logging.getLogger(__name__)


def register_resolvers() -> None:
    """The ``${astra_...}`` resolvers the configs use; idempotent (run at import, and by anything that composes)."""
    # Two runs started in the same second (SLURM arrays, runs launched by hand in parallel) must never share a
    # directory. Cached, so every interpolation of one config (and Hydra's copies of it for the jobs of a
    # multirun, which copy the resolver cache as they do for ${now:}) sees the same value.
    if not OmegaConf.has_resolver("astra_uid"):
        OmegaConf.register_new_resolver("astra_uid", lambda: uuid.uuid4().hex[:8], use_cache=True)
    # ${astra_project:}: the project folder (where conf/ and experiments/ are), so configs can name shipped files such as
    # experiments/real/qnli_split.json whatever the current directory.
    if not OmegaConf.has_resolver("astra_project"):
        OmegaConf.register_new_resolver("astra_project", lambda: str(Path(__file__).resolve().parents[3]))
    # ${astra_or:${calibration_samples},64}: the run-wide setting when it is set, else the method's own default (an
    # experiment sweeping methods sets calibration_samples once, without giving calibration to methods that have none).
    if not OmegaConf.has_resolver("astra_or"):
        OmegaConf.register_new_resolver("astra_or", lambda value, default: default if value is None else value)
    # ${astra_scaled:${model.lr},${method.lr_scale}}: the default optim.lr, the model's rate scaled for the method.
    if not OmegaConf.has_resolver(SCALED_RESOLVER):
        OmegaConf.register_new_resolver(SCALED_RESOLVER, scaled)


register_resolvers()


def job_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job directory of a multirun: its result's status and error ('missing' without a result)."""
    outcomes = []
    for job_dir in sorted(p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()):
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        result_file, skipped_file = job_dir / "result.json", job_dir / "skipped.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text(encoding="utf-8"))
            status, error = result.get("status"), result.get("error")
        elif skipped_file.is_file():  # an ok result for the same config existed (astra.run.skip_existing)
            status, error = "skipped", None
        else:
            status, error = "missing", "no result.json: the job died before it could write one"
        outcomes.append({"dir": str(job_dir), "overrides": overrides, "status": status, "error": error})
    return outcomes


def describe_failures(outcomes: list[dict[str, Any]]) -> str | None:
    failed = [outcome for outcome in outcomes if outcome["status"] not in ("ok", "skipped")]
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(outcomes)} jobs did not finish ok:"]
    for outcome in failed:
        error = (outcome["error"] or "").strip().splitlines()
        lines.append(f"  [{outcome['status']}] {' '.join(outcome['overrides'])}: {error[-1] if error else ''}")
        lines.append(f"      {outcome['dir']}")
    return "\n".join(lines)


class MultirunReport(Callback):
    """At the end of a multirun, list every job that did not finish ``ok``. Hydra turns exceptions raised by
    callbacks into warnings, so the report is kept in :data:`FAILED_JOBS_REPORT` and run.py exits 1 with it."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global FAILED_JOBS_REPORT
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        FAILED_JOBS_REPORT = describe_failures(job_outcomes(sweep_dir))
        if FAILED_JOBS_REPORT is None:
            log.info("multirun finished: every job ok (%s)", sweep_dir)


FAILED_JOBS_REPORT: str | None = None


def task_overrides() -> list[str]:
    """The command-line overrides of this job ([] outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def config_root() -> Path | None:
    """The folder the primary configs were read from (``conf/`` beside the run.py that ran); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and str(source.path).startswith("file://"):
            return Path(str(source.path).removeprefix("file://"))
    return None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
