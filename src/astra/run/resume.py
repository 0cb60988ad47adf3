"""Continuing an interrupted run (``python run.py resume=<run_dir>``): the checkpoint to continue from, after checking
that the recomposed config is the one the run recorded; and removing the checkpoint once a run finished ok."""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
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
    previous_file = run_dir / "result.json"
    previous = json.loads(previous_file.read_text(encoding="utf-8")) if previous_file.is_file() else None
    if previous is not None and previous.get("status") == "ok":
        raise ValueError(f"resume={cfg.resume}: that run already finished with status ok; nothing to resume")
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_reason(cfg, path, previous))
    check_checkpoint_readable(path)  # before the model loads: a cut-short file fails here, not after init
    if previous is not None:
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


def missing_checkpoint_reason(cfg: DictConfig, path: Path, previous: dict | None) -> str:
    """Why there is no checkpoint to resume from, as precisely as the run's record tells."""
    every = cfg.trainer.get("checkpoint_every_n_steps")
    if not every:
        return (f"resume={cfg.resume}: no checkpoint at {path}: the run saved none (trainer.checkpoint_every_n_steps "
                "was not set); start it again with trainer.checkpoint_every_n_steps=<N> to make it resumable")
    steps = (previous or {}).get("steps_done")
    if steps is not None and int(steps) < int(every):
        return (f"resume={cfg.resume}: no checkpoint at {path}: the run stopped at step {steps}, before its first "
                f"checkpoint (every {every} steps); nothing to resume, start it again with the same command")
    return (f"resume={cfg.resume}: no checkpoint at {path} although the run saved every {every} steps (was it "
            "removed?); start it again with the same command")


def check_checkpoint_readable(path: Path) -> None:
    """A checkpoint is a zip archive (torch.save); a truncated or overwritten one fails its directory or CRC check here,
    named, instead of as torch's raw message after the model has loaded. Only ``last.ckpt`` is kept, so the fallback
    is a fresh start."""
    fallback = "no earlier checkpoint is kept: start the run again with the same command (without resume=)"
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"checkpoint {path} is unreadable ({error}); {fallback}") from None
    if broken is not None:
        raise ValueError(f"checkpoint {path} is corrupt (member {broken} fails its CRC check); {fallback}")


def differing_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= differing_keys(a.get(key), b.get(key), f"{prefix}{key}.") if key in a and key in b else {prefix + key}
        return out
    return set() if a == b else {prefix.rstrip(".")}
