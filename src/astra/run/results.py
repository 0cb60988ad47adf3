"""One JSON result file per run: written atomically, never overwriting another run's file.

Result files are strict JSON (NaN / Infinity become ``null``, their paths listed under ``non_finite``) so any
JSON reader can load them, and they get the usual ``0o666 & ~umask`` permissions so collaborators can read them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TRACKED_PACKAGES = ("torch", "transformers", "peft", "lightning", "hydra-core", "wandb", "tokenizers", "astra-lora")
REQUIRED_KEYS = (
    "method", "task", "model", "seed", "rank", "alpha", "learning_rate", "config", "overrides", "metrics",
    "train_loss", "parameters", "wall_time_s", "peak_memory_bytes", "git", "versions", "status", "error",
    "created", "experiment", "run_dir",
)  # fmt: skip
RESULT_COPY_FILE = "result_copy.txt"  # in the run directory: where write_result put the results-directory copy


def _git(root: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """Commit, dirtiness and a hash of the tracked changes (``git diff HEAD``) of the checkout holding ``root``, and
    that checkout's folder; nulls when it is not a git checkout.

    Only tracked changes count: untracked files (earlier runs' result files, logs) would otherwise make every
    run after the first look "dirty"."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None or commit.returncode != 0:
        return {"commit": None, "dirty": None, "diff_sha256": None, "checkout": None}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--binary")
    top = _git(root, "rev-parse", "--show-toplevel")
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    digest = hashlib.sha256(diff.stdout.encode()).hexdigest()[:16] if dirty and diff is not None else None
    return {"commit": commit.stdout.strip(), "dirty": dirty, "diff_sha256": digest,
            "checkout": top.stdout.strip() if top is not None and top.returncode == 0 else None}  # fmt: skip


_PROCESS_START: dict[str, Any] = {}


def git_state_at_process_start() -> dict[str, Any]:
    """The package checkout's :func:`git_state` when this process first asked: ``run.py`` asks before composing, so
    every cell of a multirun records the code the process imported, not a commit that landed while the grid ran."""
    if "git" not in _PROCESS_START:
        _PROCESS_START["git"] = git_state()
    return _PROCESS_START["git"]


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


def sanitize_non_finite(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of ``obj`` with every NaN / ±Infinity replaced by ``None``, and the JSON paths of the replaced
    fields (``"train_loss.per_step[2]"``, ``"metrics.accuracy"``). Tuples become lists (as JSON has them);
    numpy / torch scalars (anything 0-dimensional with ``.item()``) become Python numbers first, so they are
    checked too and are written as numbers rather than strings."""
    is_scalar_array = getattr(obj, "ndim", None) == 0 and hasattr(obj, "item")
    if is_scalar_array and not isinstance(obj, (str, bytes, dict, list, tuple)):
        obj = obj.item()
    if isinstance(obj, float):
        return (float(obj), []) if math.isfinite(obj) else (None, [path])
    if isinstance(obj, dict):
        clean, found = {}, []
        for key, value in obj.items():
            clean[key], paths = sanitize_non_finite(value, f"{path}.{key}" if path else str(key))
            found += paths
        return clean, found
    if isinstance(obj, (list, tuple)):
        clean_list, found = [], []
        for index, value in enumerate(obj):
            clean_value, paths = sanitize_non_finite(value, f"{path}[{index}]")
            clean_list.append(clean_value)
            found += paths
        return clean_list, found
    return obj, []


def _payload(result: dict[str, Any]) -> str:
    """Strict JSON text of ``result`` (checked for REQUIRED_KEYS), with the top-level ``non_finite`` list.

    Paths a caller already listed (the run code may sanitise parts itself) are kept, then the ones found here."""
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise KeyError(f"result is missing keys {missing}")
    clean, found = sanitize_non_finite({key: value for key, value in result.items() if key != "non_finite"})
    listed = [str(path) for path in result.get("non_finite") or []]
    clean["non_finite"] = list(dict.fromkeys([*listed, *found]))
    # allow_nan=False: a non-finite float that slipped past the sanitiser is an error, not an invalid file.
    return json.dumps(clean, indent=2, sort_keys=False, default=str, allow_nan=False)


def _write_temp(payload: str, directory: Path) -> Path:
    """Write ``payload`` to a fresh hidden temp file in ``directory`` and fsync it.

    os.open with mode 0o666 lets the kernel apply the umask (tempfile.mkstemp would force 0o600), and needs no
    racy os.umask() round trip; O_EXCL keeps two writers off the same temp name."""
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f".tmp-{uuid.uuid4().hex}.json"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _fsync_dir(directory: Path) -> None:
    """Make a link / rename in ``directory`` durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic_exclusive(payload: str, directory: Path, stem: str) -> Path:
    """Write to a temp file in ``directory``, then hard-link it to a name no other file has."""
    temp = _write_temp(payload, directory)
    try:
        for attempt in range(100):
            suffix = "" if attempt == 0 else f"-{uuid.uuid4().hex[:8]}"
            target = directory / f"{stem}{suffix}.json"
            try:
                os.link(temp, target)  # fails if target exists: never overwrite
                _fsync_dir(directory)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"could not find a free result file name for {stem} in {directory}")
    finally:
        temp.unlink(missing_ok=True)


def _replace_atomic(payload: str, target: Path) -> Path:
    """Replace ``target`` (or create it) so that readers see the old or the new content, never a mix."""
    temp = _write_temp(payload, target.parent)
    try:
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def experiment_dir(results_root: str | Path, experiment: str) -> Path:
    """Where the result copies of ``experiment`` go: ``<results_root>/<experiment, as a file-name slug>``."""
    return Path(results_root) / _slug(experiment)


def write_result(result: dict[str, Any], run_dir: Path, results_root: Path) -> list[Path]:
    """Write ``result`` to ``<run_dir>/result.json`` and ``<results_root>/<experiment>/<run-name>.json``.

    The copy's absolute path goes into ``<run_dir>/result_copy.txt`` so a resumed run can replace that very
    file (see :func:`replace_result`) instead of leaving a stale copy beside a new one."""
    payload = _payload(result)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    stem = _slug(f"{result['method']}-{result['task']}-{result['model']}-seed{result['seed']}-{stamp}")
    paths = [_write_atomic_exclusive(payload, Path(run_dir), "result")]
    paths.append(_write_atomic_exclusive(payload, experiment_dir(results_root, result["experiment"]), stem))
    _replace_atomic(f"{paths[1].resolve()}\n", Path(run_dir) / RESULT_COPY_FILE)
    return paths


def result_copy_path(run_dir: Path) -> Path | None:
    """Where :func:`write_result` put the results-directory copy of this run's result; None if not recorded."""
    try:
        line = (Path(run_dir) / RESULT_COPY_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return Path(line) if line else None


def replace_result(result: dict[str, Any], run_dir: Path, results_copy: Path | None) -> list[Path]:
    """A resumed run's final result: atomically replace ``<run_dir>/result.json`` and, when known, the copy
    in the results directory (the path :func:`result_copy_path` gives), so each run keeps exactly one file."""
    payload = _payload(result)
    paths = [_replace_atomic(payload, Path(run_dir) / "result.json")]
    if results_copy is not None:
        paths.append(_replace_atomic(payload, Path(results_copy)))
    return paths


def load_results(root: Path) -> list[dict[str, Any]]:
    """Every result file under ``root`` (tables and figures are computed from these only)."""
    return [json.loads(path.read_text()) for path in sorted(Path(root).rglob("*.json")) if not path.name.startswith(".")]


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
