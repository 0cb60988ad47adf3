"""The comparison's report, from its test cells and its chosen-rates file alone: per-seed values, mean and sd per
row; each pre-registered contrast with its two-level interval (primary), the item-only interval beside it and the
minimum detectable difference; a forest plot of the contrasts. Written as ``report.md``, ``report.json`` and
``forest.png`` / ``.pdf`` under ``compare.report_dir``; the same inputs give the same bytes."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from astra.compare.protocol import UNTRAINED, Protocol, ProtocolError
from astra.compare.selection import rate_key, rule_text
from astra.report.figures import plot_forest
from astra.report.seed_intervals import BOOTSTRAP_SAMPLES, item_only_interval, two_level_interval


def per_item_outcomes(result: dict[str, Any], column: str | None = None) -> dict[str, float]:
    """Item id -> 1.0 / 0.0 (right / wrong) from a result's ``items`` block, or for a second column (e.g.
    ``loglikelihood_accuracy``) from its ``secondary_items`` block."""
    items = result.get("items") if column is None else (result.get("secondary_items") or {}).get(column)
    if column is not None and items is None:
        raise ProtocolError(f"{result.get('path', 'a test cell')} has no per-item outcomes for {column!r} (its "
                            "secondary_items): compare.secondary_metrics names a column its task did not score "
                            "(for loglikelihood_accuracy: task.eval.also_loglikelihood: true)")  # fmt: skip
    items = items or {}
    return {str(i): float(c) for i, c in zip(items.get("ids", []), items.get("correct", []))}


def _part(item_id: str) -> str:
    """The part an item id names: ``arc_e-17`` -> ``arc_e`` (the commonsense suite's ids); an id without a part
    is its own whole."""
    return item_id.rsplit("-", 1)[0] if "-" in item_id else ""


def metric_item_groups(test: dict[str, dict[int, dict[str, Any]]], metric: str,
                       column: str | None) -> dict[str, str] | None:  # fmt: skip
    """How ``metric`` weights the items, proved on every test cell: None when it is the plain mean of the per-item
    outcomes, item id -> part when it is the mean of the parts' means (each part weighted alike, e.g. the
    commonsense suite's mean of three benchmarks). A contrast's interval is then of the number the table prints.
    Raises when neither reproduces a cell's metric: an interval of another quantity would be silently wrong."""
    plain, by_part, groups = True, True, {}
    for row, by_seed in test.items():
        for seed, result in by_seed.items():
            outcomes = per_item_outcomes(result, column)
            if not outcomes or metric not in result["metrics"]:
                continue
            value = result["metrics"][metric]
            parts: dict[str, list[float]] = {}
            for item, outcome in outcomes.items():
                groups[item] = _part(item)
                parts.setdefault(groups[item], []).append(outcome)
            plain = plain and abs(fmean(outcomes.values()) - value) <= 1e-9
            by_part = by_part and abs(fmean(fmean(p) for p in parts.values()) - value) <= 1e-9
            if not (plain or by_part):
                raise ProtocolError(
                    f"row {row} seed {seed}: its {metric} ({value}) is neither the mean of its {len(outcomes)} per-item "
                    "outcomes nor the mean of its parts' means, so the contrast intervals (computed from the per-item "
                    "outcomes) would not be of the number in the table; compare a metric that is an item mean")
    return None if plain else groups


def _column(protocol: Protocol, test: dict[str, dict[int, dict[str, Any]]], chosen: dict[str, Any], metric: str,
            column: str | None) -> dict[str, Any]:  # fmt: skip
    """Rows (per-seed values, mean, sd) and contrasts (two-level and item-only intervals) of one metric."""
    rows = {}
    for row, by_seed in test.items():
        missing = [seed for seed, result in by_seed.items() if metric not in result["metrics"]]
        if missing:
            raise ProtocolError(f"row {row} seeds {missing} have no metric {metric!r} in their results")
        scores = {seed: by_seed[seed]["metrics"][metric] for seed in sorted(by_seed)}
        rows[row] = {"rate": None if row == UNTRAINED else chosen["arms"][row]["chosen"],
                     "per_seed": scores, "mean": fmean(scores.values()),
                     "sd": stdev(scores.values()) if len(scores) > 1 else None,
                     "items": len(per_item_outcomes(next(iter(by_seed.values())), column))}  # fmt: skip
    contrasts, groups = [], metric_item_groups(test, metric, column)
    for a, b in protocol.contrasts:
        entry: dict[str, Any] = {"a": a, "b": b}
        if a not in test or b not in test:
            entry["missing"] = [row for row in (a, b) if row not in test]
        else:
            outcomes_a = {s: per_item_outcomes(r, column) for s, r in test[a].items()}
            outcomes_b = {s: per_item_outcomes(r, column) for s, r in test[b].items()}
            two_level, item_only = (
                two_level_interval(outcomes_a, outcomes_b, groups=groups),
                item_only_interval(outcomes_a, outcomes_b, groups=groups),
            )
            entry["two_level"] = two_level.as_dict() if two_level else None
            entry["item_only"] = item_only.as_dict() if item_only else None
        contrasts.append(entry)
    return {"rows": rows, "contrasts": contrasts, **({"item_parts": sorted(set(groups.values()))} if groups else {})}


def build(protocol: Protocol, test: dict[str, dict[int, dict[str, Any]]], chosen: dict[str, Any]) -> dict[str, Any]:
    """``test``: row -> seed -> result. The report's numbers (``report.json``)."""
    primary = _column(protocol, test, chosen, protocol.metric, None)
    excluded = {arm: "every rate collapsed in selection" for arm, d in chosen["arms"].items() if d["chosen"] is None}
    statistic = chosen.get("statistic", "mean")  # chosen-rates files written before select.statistic: the mean
    # Named by its experiment config; a comparison may read another's cells (experiment_name), and says so.
    shared = {} if protocol.experiment == protocol.name else {"cells_of": protocol.name}
    report = {"experiment": protocol.experiment, **shared, "metric": protocol.metric, "rule": rule_text(statistic), **primary,
              "excluded": excluded, "bootstrap_samples": BOOTSTRAP_SAMPLES,
              "test_commits": code_versions(r for s in test.values() for r in s.values())}  # fmt: skip
    if protocol.secondary_metrics:
        report["secondary"] = {m: _column(protocol, test, chosen, m, m) for m in protocol.secondary_metrics}
    report["selection"] = {  # what the rule saw: every grid's mean validation score, collapses, the choice
        "seeds": chosen.get("seeds"), "untrained": chosen.get("untrained"),
        "arms": {arm: {"chosen": d["chosen"],
                       "rates": {key: {"mean": cell["mean"], "collapsed_seeds": sorted(int(seed) for seed in cell["collapsed"]),
                                       **({"worst_seed": min(cell["scores"].values())} if statistic != "mean" else {})}
                                 for key, cell in (d.get("rates") or {}).items()}}
                 for arm, d in chosen["arms"].items()},
    }  # fmt: skip
    if statistic != "mean":
        report["selection"]["statistic"] = statistic
    return report


def code_versions(results) -> list[str]:
    """The distinct git states the results ran from: ``<commit>`` or ``<commit>+dirty:<diff hash>``."""
    versions = set()
    for result in results:
        git = result.get("git") or {}
        versions.add(f"{git.get('commit')}" + (f"+dirty:{git.get('diff_sha256')}" if git.get("dirty") else ""))
    return sorted(versions)


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _interval(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    return f"{100 * entry['difference']:+.1f} [{100 * entry['low']:+.1f}, {100 * entry['high']:+.1f}]"


WIDE_SEEDS = 10  # more seeds than this: one line per seed (a row per arm would be too wide to read)


def _rows_table(rows: dict[str, Any], excluded: dict[str, str]) -> list[str]:
    seeds = sorted({seed for row in rows.values() for seed in row["per_seed"]})
    if len(seeds) > WIDE_SEEDS:
        return _rows_table_by_seed(rows, excluded, seeds)
    lines = ["| row | rate | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]  # fmt: skip
    for name, row in rows.items():
        cells = [_points(row["per_seed"].get(seed)) for seed in seeds]
        rate = "(untrained)" if row["rate"] is None else rate_key(row["rate"])
        lines.append(
            f"| {name} | {rate} | " + " | ".join(cells) + f" | {_points(row['mean'])} | {_points(row['sd'])} |"
        )
    for arm, why in excluded.items():
        lines.append(f"| {arm} | - | " + " | ".join("-" for _ in seeds) + f" | excluded: {why} | |")
    return lines


def _rows_table_by_seed(rows: dict[str, Any], excluded: dict[str, str], seeds: list[int]) -> list[str]:
    """The same numbers as :func:`_rows_table`, transposed: a column per row (its rate in the header)."""
    names = list(rows)
    header = [name if rows[name]["rate"] is None else f"{name} ({rate_key(rows[name]['rate'])})" for name in names]
    lines = ["| seed | " + " | ".join(header) + " |", "|---|" + "---|" * len(names)]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(_points(rows[name]["per_seed"].get(seed)) for name in names) + " |")
    for label, key in (("**mean**", "mean"), ("**sd**", "sd")):
        lines.append(f"| {label} | " + " | ".join(f"**{_points(rows[name][key])}**" for name in names) + " |")
    if excluded:
        lines += ["", *(f"{arm}: excluded: {why}" for arm, why in excluded.items())]
    return lines


def _contrasts_table(contrasts: list[dict[str, Any]]) -> list[str]:
    lines = ["| contrast | difference | 95% interval, seeds and items (two-level bootstrap) | 95% interval, items only "
             "| minimum detectable difference (80% power) | seeds | items |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for entry in contrasts:
        name = f"{entry['a']} - {entry['b']}"
        if "missing" in entry or not entry.get("two_level"):
            lines.append(
                f"| {name} | not computed: {', '.join(entry.get('missing', []))} has no test cells | | | | | |"
            )
            continue
        two, items = entry["two_level"], entry["item_only"]
        seeds_text = f"{two['seeds_a']} paired" if two["seeds_paired"] else f"{two['seeds_a']} / {two['seeds_b']}"
        lines.append(f"| {name} | {100 * two['difference']:+.1f} | {_interval(two)} | {_interval(items)} | "
                     f"{100 * two['minimum_detectable']:.1f} | {seeds_text} | {two['items']} |")  # fmt: skip
    return lines


def _selection_table(selection: dict[str, Any] | None) -> list[str]:
    if not selection or not selection["arms"]:
        return []
    rates = sorted({float(key) for arm in selection["arms"].values() for key in arm["rates"]})
    worst = selection.get("statistic") == "worst_seed"  # the rule maximised the lowest score: shown first
    shown = f"Lowest score over seeds {selection['seeds']} / mean" if worst else f"Mean over seeds {selection['seeds']}"
    lines = ["", "## Selection on the validation rows (x 100)", "",
             f"{shown} of each rate; `*`: a seed collapsed there (one predicted class, "
             "or a score at or below the untrained model's at that seed), so the rate was excluded; **bold**: the "
             "rate chosen. Untrained: " + ", ".join(f"seed {seed} {_points(score)}"
                                                     for seed, score in (selection["untrained"] or {}).items()) + ".",
             "", "| arm | " + " | ".join(rate_key(rate) for rate in rates) + " | chosen |",
             "|---|" + "---|" * len(rates) + "---|"]  # fmt: skip
    for arm, entry in selection["arms"].items():
        cells = []
        for rate in rates:
            cell = next((c for key, c in entry["rates"].items() if float(key) == rate), None)
            value = "" if cell is None else _points(cell["mean"])
            if cell is not None and worst:
                value = f"{_points(cell['worst_seed'])} / {value}"
            text = "" if cell is None else value + ("*" if cell["collapsed_seeds"] else "")
            chosen = entry["chosen"] is not None and cell is not None and float(rate_key(entry["chosen"])) == rate
            cells.append(f"**{text}**" if chosen else text)
        verdict = rate_key(entry["chosen"]) if entry["chosen"] is not None else "none (every rate collapsed)"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def markdown(report: dict[str, Any], protocol: Protocol) -> str:
    shared = (f" Its cells are shared with `{report['cells_of']}` (its experiment_name: result folders "
              f"`{report['cells_of']}_select`, `_test`)." if "cells_of" in report else "")
    lines = [f"# Comparison `{report['experiment']}`: {report['metric']} x 100 on the test rows", "",
             f"Rates chosen on the validation rows by the rule written in the experiment before the runs ({report['rule']}); "
             f"the choices and every selection cell: `{protocol.chosen_rates_file.name}`. "
             f"Code (git, at each process start): {', '.join(report['test_commits'])}.{shared}"
             + (" **The test cells ran from more than one code version: a comparison's cells should come from one "
                "commit (run it from a git worktree at a fixed commit).**" if len(report["test_commits"]) > 1 else ""),
             "", *_rows_table(report["rows"], report["excluded"]),
             "", "## Contrasts (x 100)", "", *_contrasts_table(report["contrasts"])]  # fmt: skip
    for metric, column in (report.get("secondary") or {}).items():
        lines += ["", f"## Second column: `{metric}` x 100", "",
                  f"The same test cells scored a second way; the rates were chosen on `{report['metric']}` alone.",
                  "", *_rows_table(column["rows"], report["excluded"]), "", *_contrasts_table(column["contrasts"])]  # fmt: skip
    lines += _selection_table(report.get("selection"))
    lines += ["", f"Two-level bootstrap: {report['bootstrap_samples']} replicates, each drawing the seeds and, "
              "independently, the test items with replacement (seeds paired by index when both rows ran them, items "
              "always paired); percentile interval, generator seed 0. Items only: each item's outcome averaged over "
              "the seeds, only the items resampled (it ignores seed-to-seed spread and is too narrow for a method "
              "comparison; shown for reference). Minimum detectable difference: (1.96 + 0.84) x the two-level "
              "bootstrap standard error, the true difference this design would detect four times in five at "
              "alpha = 0.05."]  # fmt: skip
    if report.get("item_parts"):
        lines += ["", f"Items weighted as `{report['metric']}` weights them: it is the mean of the parts' scores "
                  f"({', '.join(report['item_parts'])}), each part counted alike whatever its size, so a contrast's "
                  "difference is the difference of the table's means, and both bootstraps redraw each part's items "
                  "within that part."]  # fmt: skip
    return "\n".join(lines) + "\n"


def forest_plot(report: dict[str, Any], path: Path) -> list[Path]:
    """Each contrast a row: the two-level interval (thick) and the item-only one (thin, below it), zero marked."""
    rows = {f"{e['a']} - {e['b']}": {name: (e[key]["difference"], e[key]["low"], e[key]["high"])
                                     for key, name in (("two_level", "seeds and items (two-level)"),
                                                       ("item_only", "items only")) if e.get(key)}
            for e in report["contrasts"] if e.get("two_level")}  # fmt: skip
    return plot_forest(rows, f"difference in {report['metric']} (points), 95% interval",
                       f"{report['experiment']}: contrasts on the test rows", path)  # fmt: skip


def write(protocol: Protocol, test: dict[str, dict[int, dict[str, Any]]], chosen: dict[str, Any]) -> list[Path]:
    report = build(protocol, test, chosen)
    out = protocol.report_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report, protocol), encoding="utf-8")
    written = [out / "report.json", out / "report.md"]
    if any(e.get("two_level") for e in report["contrasts"]):
        written += forest_plot(report, out / "forest")
    return written
