"""Continuing an interrupted run (``python run.py resume=<run_dir>``): the checkpoint to continue from, after checking
that the recomposed config is the one the run recorded; and removing the checkpoint once a run finished ok."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from astra.run.checkpointing import checkpoint_path

log = logging.getLogger(__name__)


def remove_checkpoint(run_dir: Path) -> None:
    """After a run finished ok its checkpoint is no longer needed (for full fine-tuning it is several times the
    model's size): the exported adapter and the result file are what remain."""
    path = checkpoint_path(run_dir)
    if path.is_file():
        path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """For ``resume=<run_dir>``: the checkpoint to continue from, after checking that the recomposed config is
    the one the run recorded (config files edited since would silently change the science)."""
    if not cfg.get("resume"):
        return None
    if Path(str(cfg.resume)).resolve() != run_dir.resolve():
        raise ValueError(f"resume={cfg.resume} but this run's directory is {run_dir}; use `python run.py resume=<run_dir>`")
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no checkpoint at {path} (set trainer.checkpoint_every_n_steps)")
    previous_file = run_dir / "result.json"
    if previous_file.is_file():
        import json

        previous = json.loads(previous_file.read_text(encoding="utf-8"))
        if previous.get("status") == "ok":
            raise ValueError(f"resume={cfg.resume}: that run already finished with status ok; nothing to resume")
        recorded = previous.get("config") or {}
        current = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        changed = sorted(differing_keys(recorded, current) - {"resume"})
        if changed:
            raise ValueError(
                f"resume={cfg.resume}: the config recomposed from the run's overrides differs from the one it recorded "
                f"at {changed[:10]} (were config files edited since?); refusing to continue a different run"
            )
    log.info("resuming %s from %s", run_dir, path)
    return path


def differing_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= differing_keys(a.get(key), b.get(key), f"{prefix}{key}.") if key in a and key in b else {prefix + key}
        return out
    return set() if a == b else {prefix.rstrip(".")}
