"""Reading result files for the report: every ``*.json`` below a folder, selected by ``key=value`` filters on dotted
keys, duplicates of one grid cell reduced to the newest.

A result file is recognised by its ``status`` and ``config`` keys; any other JSON below the folder is ignored, and so is
everything below a folder named ``superseded`` (results kept for the record, with a README saying why, never reported).
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from astra.run.skip_existing import result_fingerprint

SUPERSEDED = "superseded"  # a folder of results kept for the record only

# Where a row label's varying keys live in a result (rank ablation, learning-rate grid, eigenvector arm, ...).
VARIANT_KEYS = {
    "rank": "rank",
    "lr": "learning_rate",
    "subspace": "config.method.init.subspace",
    "n_calib": "config.method.calibration.n_samples",
    "calib_source": "config.calibration_source",
    "center": "config.method.init.center",
    "mask_padding": "config.method.init.mask_padding",
}


def lookup(result: dict[str, Any], dotted: str) -> Any:
    """``result["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    value: Any = result
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def parse_filters(items: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    filters = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter {item!r} is not valid: expected key=value, e.g. experiment=nlg_math or "
                             "config.task.family=glue")  # fmt: skip
        filters.append((key, value))
    return filters


def _as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def matches(result: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    return all(_as_text(lookup(result, key)) == value for key, value in filters)


def load_results(results_dir: str | Path, filters: list[str] | tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every result below ``results_dir`` matching all ``filters`` (``"key=value"``), each with its ``_path``."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--results {root}: no such folder (result copies go to experiments/results/)")
    parsed = parse_filters(filters)
    found = []
    for path in sorted(root.rglob("*.json")):
        if SUPERSEDED in path.relative_to(root).parts[:-1]:
            continue
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            # Loud, never silent: a truncated or hand-edited result file would otherwise just vanish from the tables.
            warnings.warn(f"skipping {path}: not a readable JSON file ({error})", stacklevel=2)
            continue
        if isinstance(result, dict) and "status" in result and isinstance(result.get("config"), dict):
            if matches(result, parsed):
                found.append({**result, "_path": str(path)})
    if not found:
        selection = f" matching {list(filters)}" if filters else ""
        raise ValueError(f"no result files{selection} below {root}: nothing to report")
    return found


def cell_identity(result: dict[str, Any]) -> str:
    """Two results of one grid cell (the same resolved config, seed included, wherever the project was) share this."""
    return result_fingerprint(result)


def newest_per_cell(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Of several ok results of one cell keep the newest (by ``created``); the notes say which were dropped."""
    cells: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        cells[cell_identity(result)].append(result)
    kept, notes = [], []
    for group in cells.values():
        group.sort(key=lambda r: str(r.get("created")))
        kept.append(group[-1])
        for older in group[:-1]:
            notes.append(f"{Path(older['_path']).name} duplicates {Path(group[-1]['_path']).name} (same config); "
                         "the newer is used")  # fmt: skip
    return kept, notes


def expand_suites(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A suite result (one training scored on several benchmarks: ``config.task.benchmarks``) as one result per
    benchmark, so each benchmark is a column: its ``accuracy_<benchmark>`` becomes ``accuracy``, its items those whose
    id starts with ``<benchmark>-``. Training curves keep the suite as one task."""
    out = []
    for result in results:
        benchmarks = lookup(result, "config.task.benchmarks")
        if not benchmarks:
            out.append(result)
            continue
        items = result.get("items") or {"ids": [], "correct": []}
        for benchmark in benchmarks:
            value = (result.get("metrics") or {}).get(f"accuracy_{benchmark}")
            keep = [k for k, item in enumerate(items["ids"]) if str(item).startswith(f"{benchmark}-")]
            task = {**result["config"]["task"], "name": benchmark, "eval": {"primary_metric": "accuracy"}}
            metrics = {} if value is None else {"accuracy": value}
            if "forgetting" in (result.get("metrics") or {}):  # one figure per training, shown once per row
                metrics["forgetting"] = result["metrics"]["forgetting"]
            out.append({**result, "task": benchmark, "metrics": metrics,
                        "config": {**result["config"], "task": task},
                        "items": {"ids": [items["ids"][k] for k in keep], "correct": [items["correct"][k] for k in keep]}})  # fmt: skip
    return out
