"""Skip a grid cell that already has an ``ok`` result for the same resolved config, so an interrupted or partly
failed multirun resumes where it stopped when it is launched again.

The identity of a cell is a hash of its resolved config (the ``config`` every result file records) without the
keys that say where and how a run is logged rather than what it computes: ``paths`` (run and result
directories), ``logger``, ``resume``, ``skip_existing`` itself and ``compare`` (a comparison's protocol, which the
``astra.compare`` command reads: its grids and report folder say which cells exist, not what one computes). The project folder (``${astra_project:}``, e.g. in
``task.row_ids.file``) is hashed as that placeholder, not as its absolute path, so a clone elsewhere recognises the
committed results; each result records its ``project_root`` for that, and for results written before it did, the root
is read off a recorded path naming a file the project ships. A stored result's identity is always recomputed from its
recorded config (so results written before the hash existed match too). Failed or interrupted cells have no ``ok``
result, so they run again.

``skip_existing``: ``auto`` (default: skip in a multirun, never in a single run, where running the same command
twice usually means "again"), ``true`` or ``false`` (force every cell to run).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

NOT_PART_OF_THE_CELL = ("paths", "logger", "resume", "skip_existing", "compare")
CHOICES = ("auto", True, False)
SKIPPED_FILE = "skipped.json"  # in the job directory of a skipped cell: which result stands for it
PROJECT_ROOT = str(Path(__file__).resolve().parents[3])  # what ${astra_project:} resolves to (hydra_support)
PROJECT_PLACEHOLDER = "${astra_project:}"
SHIPPED_FOLDERS = ("experiments", "conf", "src", "tests")  # where a recorded path may name a file the project ships


# Classes and functions that moved between modules keep the identity of the cells that named them: a ``_target_`` is
# hashed in its first spelling, so results written before a move are still recognised (skip-existing, the report's
# grouping) and their fingerprints never change. A move adds a line here; nothing is ever removed.
HISTORICAL_TARGETS = {
    "astra.telemetry.loss.LRMonitor": "astra.callbacks.LRMonitor",
    "astra.telemetry.loss.LossMonitor": "astra.callbacks.LossMonitor",
    "astra.telemetry.grad_norm.GradNormMonitor": "astra.callbacks.GradNormMonitor",
    "astra.telemetry.rank.EffectiveRankMonitor": "astra.callbacks.EffectiveRankMonitor",
    "astra.telemetry.run_facts.RunFactsMonitor": "astra.callbacks.RunFactsMonitor",
    "astra.training.strategies.fsdp_strategy": "astra.strategies.fsdp_strategy",
    "astra.run.hydra_support.MultirunReport": "astra.hydra_support.MultirunReport",
}


# Inputs whose whole effect is another key's resolved value, which is hashed: ``method.lr_scale`` only enters the
# default ``optim.lr`` (= model.lr x lr_scale), and the run-wide ``eigensolver`` only fills Astra's
# ``method.init.eigensolver``. Hashing them too would add nothing and would change the identity of every cell
# recorded before they existed. A new derived input adds a line here.
DERIVED_INPUTS = (("method", "lr_scale"), ("eigensolver",))
# Settings added after results were recorded whose default is exactly the behaviour before them: that value is not
# hashed, so the cells recorded before them (which lack the key, or pin the default) keep their identity; any other
# value is hashed. A new setting of that kind adds a line here.
UNHASHED_DEFAULTS = {
    ("model", "min_train_steps"): None,
    ("task", "eval", "also_loglikelihood"): False,  # commonsense: the second, log-likelihood column (off)
    ("optim", "head_lr"): None,  # classification: the head trains at optim.lr, as before the setting
}


def without_derived_inputs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without :data:`DERIVED_INPUTS` and without the :data:`UNHASHED_DEFAULTS` keys that hold their
    default (a shallow copy along their paths; the input is not changed)."""
    config = dict(config)
    unset = object()
    for path, default in [*((p, unset) for p in DERIVED_INPUTS), *UNHASHED_DEFAULTS.items()]:
        node = config
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                break
            node[key] = dict(node[key])
            node = node[key]
        else:
            if default is unset or (path[-1] in node and node[path[-1]] is default):
                node.pop(path[-1], None)
    return config


def historical_targets(node: Any) -> Any:
    """``node`` with every ``_target_`` written in its first spelling (:data:`HISTORICAL_TARGETS`)."""
    if isinstance(node, dict):
        return {key: HISTORICAL_TARGETS.get(value, value) if key == "_target_" and isinstance(value, str)
                else historical_targets(value) for key, value in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [historical_targets(value) for value in node]
    return node


def config_fingerprint(config: dict[str, Any], project_root: str | None = PROJECT_ROOT) -> str:
    """sha256 (16 hex digits) of a resolved config (a plain dict) without the keys of ``NOT_PART_OF_THE_CELL``, with
    ``project_root`` (the folder the config was resolved in; None: none known) written as ``${astra_project:}``,
    moved ``_target_`` paths in their first spelling and without :data:`DERIVED_INPUTS`."""
    config = without_derived_inputs(config)
    cell = {key: historical_targets(value) for key, value in config.items() if key not in NOT_PART_OF_THE_CELL}
    text = json.dumps(cell, sort_keys=True, default=str, separators=(",", ":"))
    if project_root:
        text = text.replace(json.dumps(project_root)[1:-1], PROJECT_PLACEHOLDER)  # as JSON escapes it
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_of(cfg: DictConfig) -> str:
    return config_fingerprint(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False))


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def recorded_project_root(result: dict[str, Any]) -> str | None:
    """The project folder a result's config was resolved in: its ``project_root``, or (results written before it
    was recorded) the prefix of an absolute recorded path whose rest names a file this project ships in the same
    place (e.g. ``/elsewhere/experiments/real/qnli_split.json``); None when nothing tells."""
    if result.get("project_root"):
        return str(result["project_root"])
    for text in _strings(result.get("config", {})):
        path = PurePath(text)
        if not path.is_absolute():
            continue
        for cut, part in enumerate(path.parts[1:], start=1):
            inside = PurePath(*path.parts[cut:])
            if part in SHIPPED_FOLDERS and (Path(PROJECT_ROOT) / inside).is_file():
                return str(PurePath(*path.parts[:cut]))
    return None


def result_fingerprint(result: dict[str, Any]) -> str:
    """The cell identity of a stored result (its recorded config), comparable with :func:`fingerprint_of`."""
    return config_fingerprint(result["config"], recorded_project_root(result))


def should_skip(cfg: DictConfig, in_multirun: bool) -> bool:
    choice = cfg.get("skip_existing", "auto")
    if choice not in CHOICES:
        raise ValueError(f"skip_existing={choice!r} is not valid; expected one of {list(CHOICES)}")
    if cfg.get("resume"):
        return False  # resume= continues its own run
    return in_multirun if choice == "auto" else bool(choice)


def find_ok_result(results_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest ``ok`` result in ``results_dir`` (an experiment's folder) whose config has ``fingerprint``,
    with its ``path``."""
    newest = None
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # not a result file (or one being written): never a reason to skip
        if not isinstance(result, dict) or result.get("status") != "ok" or not isinstance(result.get("config"), dict):
            continue
        found = result_fingerprint(result)
        if found == fingerprint and (newest is None or str(result.get("created")) > str(newest.get("created"))):
            newest = {**result, "path": str(path)}
    return newest


def record_skip(job_dir: Path, existing: dict[str, Any]) -> Path:
    """Leave a note in the job directory, so the multirun report counts the cell as done."""
    job_dir.mkdir(parents=True, exist_ok=True)
    note = {"status": "skipped", "existing_result": existing["path"], "metrics": existing.get("metrics", {})}
    path = job_dir / SKIPPED_FILE
    path.write_text(json.dumps(note, indent=2, allow_nan=True), encoding="utf-8")
    return path
