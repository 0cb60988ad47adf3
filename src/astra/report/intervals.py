"""Each row's difference to a baseline row (LoRA): first with the primary interval, a two-level bootstrap over seeds
and test items (:mod:`astra.report.seed_intervals`) and the design's minimum detectable difference, then with the
item-only interval of earlier reports, labelled as such.

Item-only, paired: only the seeds both rows have are compared (a grid still running must not set one row's three seeds against
another's one); per test item (matched by id across runs), each row's right/wrong outcome is averaged over those
seeds, the baseline's likewise, and the per-item differences are resampled with replacement (percentile interval,
seeded, so a table regenerates identically). Needs the ``items`` block run.py writes into result files; tasks
without per-item outcomes (STS-B) and items missing from either side are left out, and the table says how many
items were compared.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from astra.report.seed_intervals import Interval, two_level_interval
from astra.report.tables import MISSING, method_rank, row_label, varying_keys

BOOTSTRAP_SAMPLES = 10_000
POOLED = "all items"  # the column of a suite's table that resamples every task's items together


def per_item_means(results: list[dict[str, Any]]) -> dict[str, float]:
    """Item id -> the fraction of these runs (seeds) that got it right; items every run scored."""
    counts: dict[str, list[int]] = defaultdict(list)
    for result in results:
        items = result.get("items") or {}
        for item_id, correct in zip(items.get("ids", []), items.get("correct", [])):
            counts[item_id].append(int(correct))
    return {item: sum(values) / len(values) for item, values in counts.items() if len(values) == len(results)}


def common_seeds(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> tuple[list, list]:
    """The runs of each side whose seed the other side also has."""
    shared = {r.get("seed") for r in runs} & {r.get("seed") for r in baseline}
    return [r for r in runs if r.get("seed") in shared], [r for r in baseline if r.get("seed") in shared]


def paired_interval(row: dict[str, float], baseline: dict[str, float], samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> tuple[float, float, float, int] | None:  # fmt: skip
    """(mean difference, 2.5th and 97.5th percentile of its bootstrap distribution, items) in score units."""
    common = sorted(set(row) & set(baseline))
    if not common:
        return None
    differences = torch.tensor([row[item] - baseline[item] for item in common], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(common), (samples, len(common)), generator=generator)
    means = differences[picks].mean(dim=1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(differences.mean()), low, high, len(common)


def difference_table(results: list[dict[str, Any]], title: str, baseline: str = "lora",
                     headline: dict[str, Interval] | None = None) -> str | None:  # fmt: skip
    """Markdown: rows = row labels other than the baseline, columns = tasks, cells ``+d [lo, hi]`` (×100).
    ``headline``, when given, receives each row's two-level interval over all its items (the forest plot's)."""
    varying = varying_keys(results)
    by_row: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    methods = {}
    for result in results:
        label = row_label(result, varying)
        by_row[label][result["task"]].append(result)
        methods[label] = result["method"]
    base_labels = [label for label, method in methods.items() if method == baseline]
    if len(base_labels) != 1:
        return None  # no single baseline row (none, or several learning rates of it): nothing to pair with
    base = by_row[base_labels[0]]
    tasks = sorted({r["task"] for r in results if r.get("items")})
    if not tasks:
        return None
    pooled = len(tasks) > 1  # a suite: one more column, every task's items resampled together
    columns = tasks + ([POOLED] if pooled else [])
    order = sorted((lb for lb in by_row if lb != base_labels[0]), key=lambda lb: (method_rank(methods[lb]), lb))
    lines = seed_level_section(by_row, base, order, tasks, pooled, title, baseline, headline)
    lines += [f"### {title}: difference to {baseline}, items only (×100, 95% paired bootstrap interval over test "
              "items; it ignores seed-to-seed spread: too narrow for a method comparison)", "",
             "| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]  # fmt: skip
    counts = {}
    for label in sorted(by_row, key=lambda lb: (method_rank(methods[lb]), lb)):
        if label == base_labels[0]:
            continue
        cells, row_all, base_all = [], {}, {}
        for task in tasks:
            row_runs, base_runs = common_seeds(by_row[label].get(task, []), base.get(task, []))
            row_items, base_items = per_item_means(row_runs), per_item_means(base_runs)  # {} when no seed is shared
            row_all.update({f"{task}/{item}": value for item, value in row_items.items()})
            base_all.update({f"{task}/{item}": value for item, value in base_items.items()})
            cells.append(_cell(paired_interval(row_items, base_items), counts, task))
        if pooled:
            cells.append(_cell(paired_interval(row_all, base_all), counts, POOLED))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    items = ", ".join(f"{task} {counts[task]}" for task in columns if task in counts)
    lines += ["", f"Items compared: {items}. Per item, each row's right/wrong averaged over its seeds; "
              f"{BOOTSTRAP_SAMPLES} resamples of the items, seed 0."]  # fmt: skip
    if pooled:
        lines[-1] += (f" {POOLED}: the items of every task resampled together (the item-weighted mean of the tasks' "
                      "differences; with equal item counts, the difference of the suite averages).")  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(interval: tuple[float, float, float, int] | None, counts: dict[str, int], column: str) -> str:
    if interval is None:
        return MISSING
    mean, low, high, n_items = interval
    counts[column] = n_items
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def seed_outcomes(runs: list[dict[str, Any]], prefix: str = "") -> dict[int, dict[str, float]]:
    """Seed -> item id (with ``prefix``) -> right/wrong, from runs' ``items`` blocks."""
    outcomes: dict[int, dict[str, float]] = defaultdict(dict)
    for run in runs:
        items = run.get("items") or {}
        for item_id, correct in zip(items.get("ids", []), items.get("correct", [])):
            outcomes[run.get("seed")][f"{prefix}{item_id}"] = float(correct)
    return dict(outcomes)


def seed_level_section(by_row, base, order: list[str], tasks: list[str], pooled: bool, title: str,
                       baseline: str, headline: dict[str, Interval] | None = None) -> list[str]:  # fmt: skip
    """The primary table (two-level interval per task, and pooled for a suite) and the minimum-detectable-difference
    table beneath it, as markdown lines."""
    columns = tasks + ([POOLED] if pooled else [])
    header = ["| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    differences, detectable, seeds_used = [], [], {}
    for label in order:
        row_cells, mdd_cells = [], []
        row_all, base_all = defaultdict(dict), defaultdict(dict)
        for task in tasks:
            row_task, base_task = seed_outcomes(by_row[label].get(task, []), f"{task}/"), seed_outcomes(base.get(task, []), f"{task}/")
            for seed, values in row_task.items():
                row_all[seed].update(values)
            for seed, values in base_task.items():
                base_all[seed].update(values)
            interval = two_level_interval(row_task, base_task) if row_task and base_task else None
            row_cells.append(_two_level_cell(interval))
            mdd_cells.append(MISSING if interval is None else f"{100 * interval.minimum_detectable:.1f}")
            if interval is not None:
                seeds_used[label] = interval
        if pooled:
            interval = two_level_interval(dict(row_all), dict(base_all)) if row_all and base_all else None
            row_cells.append(_two_level_cell(interval))
            mdd_cells.append(MISSING if interval is None else f"{100 * interval.minimum_detectable:.1f}")
        if headline is not None and interval is not None:  # the single task's, or the pooled one of a suite
            headline[label] = interval
        differences.append(f"| {label} | " + " | ".join(row_cells) + " |")
        detectable.append(f"| {label} | " + " | ".join(mdd_cells) + " |")
    pairing = "; ".join(f"{label} {iv.seeds_a} paired" if iv.seeds_paired else f"{label} {iv.seeds_a} vs {iv.seeds_b}"
                        for label, iv in seeds_used.items())  # fmt: skip
    return [f"### {title}: difference to {baseline} (×100, 95% two-level bootstrap interval: seeds and test items)", "",
            *header, *differences, "",
            f"Seeds per row (paired by index with {baseline}'s where both ran at least two): {pairing}. Each of "
            f"{BOOTSTRAP_SAMPLES} replicates draws the seeds and, independently, the items with replacement; "
            "percentile interval, seed 0.", "",
            f"### {title}: minimum detectable difference to {baseline} (×100; 80% power, alpha 0.05: 2.80 x the "
            "two-level standard error)", "", *header, *detectable, "",
            "0.0: the two rows gave the same outcome on every item at every seed, so the bootstrap has no spread to "
            "measure; it does not mean any difference would be detected.", ""]  # fmt: skip


def _two_level_cell(interval: Interval | None) -> str:
    if interval is None:
        return MISSING
    return f"{100 * interval.difference:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
