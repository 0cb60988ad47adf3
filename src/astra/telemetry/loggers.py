"""Experiment loggers: W&B (offline by default), CSV, or none, from a ``conf/logger/*.yaml`` node.

The node has exactly ``{kind: wandb|csv|none, project: astra, offline: true}``.

- ``wandb``: a Lightning ``WandbLogger`` with ``project``, ``group`` (the experiment), ``name``
  (method-task-seed), the resolved config, ``save_dir=run_dir``; offline mode writes
  ``run_dir/wandb/offline-run-*`` (upload later with ``wandb sync``). ``WANDB_DIR``, ``WANDB_CACHE_DIR``,
  ``WANDB_CONFIG_DIR``, ``WANDB_DATA_DIR`` and ``WANDB_ARTIFACT_DIR`` are pointed inside ``run_dir`` before
  wandb is initialised, so nothing is written to the home folder; they are restored by
  :func:`finish_loggers`.
- ``csv``: a Lightning ``CSVLogger`` writing ``run_dir/csv/metrics.csv`` (every series W&B gets, since
  both receive the same ``log_metrics`` calls) and ``run_dir/csv/hparams.yaml`` (the config).
- ``none``: no logger (callbacks still compute their summaries).

:func:`finish_loggers` must always run (use ``try/finally`` or :func:`logger_session`): it writes the final
figures (W&B run summary, ``run_dir/csv/summary.json``) and calls ``wandb.finish`` even when training
raised, so one failed job does not break the next job of a multirun.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger

log = logging.getLogger(__name__)

WANDB_ENV_DIRS = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": "wandb/cache",
    "WANDB_CONFIG_DIR": "wandb/config",
    "WANDB_DATA_DIR": "wandb/data",
    "WANDB_ARTIFACT_DIR": "wandb/artifacts",
}
_saved_env: dict[str, str | None] = {}


def _to_plain(config: Any) -> dict:
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(config)


def point_wandb_env(run_dir: Path, offline: bool = True) -> dict[str, str]:
    """Point every wandb directory variable (and ``WANDB_MODE`` when offline) inside ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    values = {key: str(run_dir / sub) if sub else str(run_dir) for key, sub in WANDB_ENV_DIRS.items()}
    if offline:
        values["WANDB_MODE"] = "offline"
    for key, value in values.items():
        if key not in _saved_env:
            _saved_env[key] = os.environ.get(key)
        if key != "WANDB_MODE":
            Path(value).mkdir(parents=True, exist_ok=True)
        os.environ[key] = value
    return values


def restore_wandb_env() -> None:
    """Undo :func:`point_wandb_env`."""
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env.clear()


def build_loggers(
    logger_cfg: Mapping[str, Any] | None,
    run_dir: os.PathLike[str] | str,
    run_name: str,
    group: str | None,
    config_dict: Any,
) -> list[Logger]:
    """Loggers for one run from ``{kind, project, offline}``; ``[]`` for ``kind: none`` or a null node."""
    kind = logger_cfg.get("kind", "none") if logger_cfg is not None else "none"
    kind = "none" if kind in (None, False) else str(kind).lower()
    if kind == "none":
        return []
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = _to_plain(config_dict)
    if kind == "csv":
        logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
        if config:
            logger.log_hyperparams(config)
        return [logger]
    if kind == "wandb":
        offline = bool(logger_cfg.get("offline", True))
        point_wandb_env(run_dir, offline=offline)
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        if wandb.run is not None:  # a previous job of this process did not finish its run
            log.warning("finishing a stale wandb run %s before starting %s", wandb.run.name, run_name)
            wandb.finish(exit_code=1)
        logger = WandbLogger(
            name=run_name,
            save_dir=str(run_dir),
            offline=offline,
            project=logger_cfg.get("project") or "astra",
            group=group,
            job_type="train",
            config=config,
            mode="offline" if offline else "online",
        )
        # Lightning always passes anonymous=None, which wandb >= 0.2x reports as a deprecated setting on every run;
        # the key means nothing offline, so it is dropped before the run starts (no warning line per run).
        if getattr(logger, "_wandb_init", {}).get("anonymous", "set") is None:
            logger._wandb_init.pop("anonymous")
        _ = logger.experiment  # start now: config recorded, errors surface before training
        return [logger]
    raise ValueError(f"logger.kind={kind!r} is not one of wandb, csv, none")


def log_summary(loggers: list[Logger], summary: Mapping[str, Any]) -> None:
    """Final figures: W&B run summary; ``summary.json`` in a CSV logger's directory."""
    clean = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(clean)
        elif isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(clean, indent=2, sort_keys=True))


def finish_loggers(loggers: list[Logger], failed: bool, summary: Mapping[str, Any] | None = None) -> None:
    """Write ``summary`` (if any), finalise every logger and always call ``wandb.finish`` for W&B loggers
    (exit code 1 when ``failed``), then ``wandb.teardown`` so the offline run file is complete. Never raises:
    problems are logged, so the caller's own error (if any) is the one that propagates."""
    if summary:
        try:
            log_summary(loggers, summary)
        except Exception:
            log.exception("writing the run summary failed")
    status = "failed" if failed else "success"
    uses_wandb = False
    for logger in loggers:
        uses_wandb |= type(logger).__name__ == "WandbLogger"
        try:
            logger.finalize(status)
        except Exception:
            log.exception("finalising %s failed", type(logger).__name__)
    if uses_wandb:
        try:
            import wandb

            code = 1 if failed else 0
            for logger in loggers:
                experiment = getattr(logger, "_experiment", None)
                if experiment is not None and experiment is not wandb.run and hasattr(experiment, "finish"):
                    experiment.finish(exit_code=code)
            wandb.finish(exit_code=code)
            # finish() can return before the W&B service has flushed the offline run file; teardown waits for
            # the service to exit, so the run's data is on disk when this returns (the next run starts a new one).
            wandb.teardown(exit_code=code)
        except (Exception, SystemExit):  # teardown exits the process when the service failed: log it instead
            log.exception("wandb.finish failed")
        finally:
            restore_wandb_env()


@contextmanager
def logger_session(
    logger_cfg: Mapping[str, Any] | None,
    run_dir: os.PathLike[str] | str,
    run_name: str,
    group: str | None,
    config_dict: Any,
) -> Iterator[tuple[list[Logger], dict[str, Any]]]:
    """``with logger_session(...) as (loggers, summary):`` build the loggers; fill ``summary`` (a dict) with
    the final figures; on exit :func:`finish_loggers` runs, with ``failed=True`` if the block raised."""
    loggers = build_loggers(logger_cfg, run_dir, run_name, group, config_dict)
    summary: dict[str, Any] = {}
    failed = True
    try:
        yield loggers, summary
        failed = False
    finally:
        finish_loggers(loggers, failed=failed, summary=summary)
