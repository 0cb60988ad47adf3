"""One JSON result file per run: written atomically, never overwriting another run's file."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRACKED_PACKAGES = ("torch", "transformers", "peft", "lightning", "hydra-core", "wandb", "tokenizers", "astra-lora")
REQUIRED_KEYS = (
    "method", "task", "model", "seed", "rank", "alpha", "learning_rate", "config", "overrides", "metrics",
    "train_loss", "parameters", "wall_time_s", "peak_memory_bytes", "git", "versions", "status", "error",
    "created", "experiment", "run_dir",
)  # fmt: skip


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit and dirtiness of the source tree; nulls when it is not a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def loss_summary(losses: list[float], window: int = 10) -> dict[str, Any]:
    if not losses:
        return {"steps": 0, "first": None, "final": None, "first_mean": None, "last_mean": None, "per_step": []}
    head, tail = losses[:window], losses[-window:]
    return {
        "steps": len(losses),
        "first": losses[0],
        "final": losses[-1],
        f"first_{window}_mean": sum(head) / len(head),
        f"last_{window}_mean": sum(tail) / len(tail),
        "per_step": losses,
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", str(text)).strip("-") or "run"


def _write_atomic_exclusive(payload: str, directory: Path, stem: str) -> Path:
    """Write to a temp file in ``directory``, then hard-link it to a name no other file has."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        for attempt in range(100):
            suffix = "" if attempt == 0 else f"-{uuid.uuid4().hex[:8]}"
            target = directory / f"{stem}{suffix}.json"
            try:
                os.link(temp_name, target)  # fails if target exists: never overwrite
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"could not find a free result file name for {stem} in {directory}")
    finally:
        os.unlink(temp_name)


def write_result(result: dict[str, Any], run_dir: Path, results_root: Path) -> list[Path]:
    """Write ``result`` to ``<run_dir>/result.json`` and ``<results_root>/<experiment>/<run-name>.json``."""
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise KeyError(f"result is missing keys {missing}")
    payload = json.dumps(result, indent=2, sort_keys=False, default=str)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem = _slug(f"{result['method']}-{result['task']}-{result['model']}-seed{result['seed']}-{stamp}")
    paths = [_write_atomic_exclusive(payload, Path(run_dir), "result")]
    paths.append(_write_atomic_exclusive(payload, Path(results_root) / _slug(result["experiment"]), stem))
    return paths


def load_results(root: Path) -> list[dict[str, Any]]:
    """Every result file under ``root`` (tables and figures are computed from these only)."""
    return [json.loads(path.read_text()) for path in sorted(Path(root).rglob("*.json")) if not path.name.startswith(".")]


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
