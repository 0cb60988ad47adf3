"""Figures from result files alone (matplotlib, Agg; PNG and PDF): training curves per task (loss, gradient norm,
effective rank against step: per row label the mean over seeds of an exponentially smoothed curve, with a band from the
lowest to the highest seed) and ablation plots (the primary metric against a key that varies within a group: rank,
calibration size, learning rate (log axis) as lines per method, rows dodged sideways so tied rows stay visible; the
eigenvector arm or calibration source as bars with two-level bootstrap error bars and every seed drawn as a dot).
Colours: the Okabe-Ito palette (colour-blind safe), with line styles when rows outnumber it; legends outside the axes."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from astra.report.results import VARIANT_KEYS, lookup
from astra.report.seed_intervals import two_level_interval
from astra.report.tables import primary_metric, row_label, score, varying_keys

CURVES = {"train/loss": "training loss", "grad/norm": "gradient norm (pre-clip)", "rank/eff/mean": "effective rank (mean)"}
FIRST_STEPS = 50  # loss and gradient norm are drawn again over the first steps, where the inits differ most
EARLY_CURVES = ("train/loss", "grad/norm")
LINE_KEYS = {"rank": "rank", "n_calib": "calibration samples", "lr": "learning rate"}
BAR_KEYS = {"subspace": "eigenvector arm", "calib_source": "calibration source"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
EMA_WEIGHT = 0.1  # smoothing of per-step curves: s_t = 0.1 x value_t + 0.9 x s_(t-1), stated on every curve figure
LOG_SCALE_SERIES = ("grad/norm",)  # a step-0 spike would flatten the rest on a linear axis
DODGE = 0.05  # on a log rate axis, rows are shifted by up to +-5% x per row so equal scores do not hide each other


def style(index: int) -> dict[str, Any]:
    """Row ``index``'s colour and line style: eight colours, then the same colours dashed, and so on."""
    return {"color": OKABE_ITO[index % len(OKABE_ITO)], "linestyle": LINESTYLES[(index // len(OKABE_ITO)) % len(LINESTYLES)]}


def smoothed(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Exponential moving average, started at the first value."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else weight * value + (1 - weight) * out[-1])
    return out


def legend_outside(axis) -> None:
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        # No creation date in the PDF, so regenerating the committed figures from the same results is a no-op in git.
        metadata = {"CreationDate": None} if suffix == ".pdf" else None
        figure.savefig(path.with_suffix(suffix), dpi=120, bbox_inches="tight", metadata=metadata)
        written.append(path.with_suffix(suffix))
    _pyplot().close(figure)
    return written


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def group_by(results: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[tuple(lookup(result, key) for key in keys)].append(result)
    return dict(groups)


def plot_training_curves(results: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Per (experiment, model, task) and series: one line per seed, coloured by row label; loss and gradient norm
    also over the first ``FIRST_STEPS`` steps alone (``..._first50``)."""
    written = []
    for (experiment, model, task), group in sorted(group_by(results, "experiment", "model", "task").items(), key=str):
        varying = varying_keys(group)
        for series, label in CURVES.items():
            runs = [r for r in group if (r.get("series") or {}).get(series, {}).get("step")]
            if not runs:
                continue
            stem = Path(out_dir) / "figures" / slug(f"{experiment}_{model}_{task}_{series.replace('/', '-')}")
            title = f"{task} ({model}, {experiment})"
            written += _curve_figure(runs, series, label, title, stem, varying, None)
            if series in EARLY_CURVES:
                written += _curve_figure(runs, series, label, f"{title}, first {FIRST_STEPS} steps",
                                         stem.with_name(f"{stem.name}_first{FIRST_STEPS}"), varying, FIRST_STEPS)
    return written


def series_points(points: dict[str, list], last_step: int | None = None) -> tuple[list, list]:
    """(steps, values) of a result's series, up to ``last_step`` inclusive when given."""
    keep = [k for k, step in enumerate(points["step"]) if last_step is None or step <= last_step]
    return [points["step"][k] for k in keep], [points["value"][k] for k in keep]


def _curve_figure(runs, series: str, label: str, title: str, stem: Path, varying: list[str],
                  last_step: int | None) -> list[Path]:  # fmt: skip
    """Per row label: the mean over seeds of the smoothed curves on the steps every seed logged, and a band from the
    lowest to the highest seed; one seed: its smoothed curve alone."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in runs:
        rows[row_label(result, varying)].append(result)
    for index, name in enumerate(sorted(rows)):
        curves = [dict(zip(*series_points(r["series"][series], last_step))) for r in rows[name]]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        smooth = [smoothed([c[step] for step in steps]) for c in curves]
        mean = [statistics.fmean(values) for values in zip(*smooth)]
        look = style(index)
        seeds = f" ({len(curves)} seeds)" if len(curves) > 1 else ""
        axis.plot(steps, mean, linewidth=1.4, label=f"{name}{seeds}", **look)
        if len(curves) > 1:
            axis.fill_between(steps, [min(v) for v in zip(*smooth)], [max(v) for v in zip(*smooth)],
                              color=look["color"], alpha=0.15, linewidth=0)  # fmt: skip
    if series in LOG_SCALE_SERIES:
        axis.set_yscale("log")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(f"{label}{', log scale' if series in LOG_SCALE_SERIES else ''}")
    axis.set_title(f"{title}\nEMA-smoothed (weight {EMA_WEIGHT}); line: mean over seeds, band: lowest to highest seed",
                   fontsize=9)  # fmt: skip
    legend_outside(axis)
    return _save(figure, stem)


def seed_outcomes(rows: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Seed -> item id -> right/wrong, from the rows' ``items`` blocks (empty when they have none)."""
    outcomes: dict[int, dict[str, float]] = defaultdict(dict)
    for result in rows:
        items = result.get("items") or {}
        for item_id, correct in zip(items.get("ids", []), items.get("correct", [])):
            outcomes[result.get("seed")][str(item_id)] = float(correct)
    return dict(outcomes)


def mean_interval(rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """The two-level (seeds and items) 95% interval of the rows' mean score, x100; None without per-item outcomes."""
    outcomes = seed_outcomes(rows)
    if not outcomes:
        return None
    zeros = {seed: dict.fromkeys(items, 0.0) for seed, items in outcomes.items()}
    interval = two_level_interval(outcomes, zeros, samples=2_000)
    return None if interval is None else (100 * interval.low, 100 * interval.high)


def plot_ablations(results: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """The primary metric against each key that varies within an (experiment, model, task) group."""
    plt, written = _pyplot(), []
    for (experiment, model, task), group in sorted(group_by(results, "experiment", "model", "task").items(), key=str):
        scored = [r for r in group if score(r) is not None]
        for key in varying_keys(scored):
            if key not in LINE_KEYS and key not in BAR_KEYS:
                continue
            figure, axis = plt.subplots(figsize=(6, 4))
            others = [k for k in varying_keys(scored) if k != key]
            by_row = group_by(scored, "method", *[VARIANT_KEYS[k] for k in others])
            if key in BAR_KEYS:
                _bar_groups(axis, by_row, key, others)
            for index, (_, rows) in enumerate(sorted(by_row.items(), key=str) if key in LINE_KEYS else []):
                if lookup(rows[0], "config.method.trains") is False:
                    # A model that trains nothing has no rate (rank, ...): a reference level, not a point on the axis.
                    level = statistics.fmean(100 * score(r) for r in rows)
                    label = f"{row_label(rows[0], others)} (no training)"
                    axis.axhline(level, color="grey", linestyle="--", linewidth=1, label=label)
                    continue
                values, runs_at = defaultdict(list), defaultdict(list)
                for result in rows:
                    values[lookup(result, VARIANT_KEYS[key])].append(100 * score(result))
                    runs_at[lookup(result, VARIANT_KEYS[key])].append(result)
                xs = sorted((x for x in values if x is not None), key=lambda x: (isinstance(x, str), x))
                means = [statistics.fmean(values[x]) for x in xs]
                name = row_label(rows[0], others)
                # Hollow markers of different shapes and colours, dodged sideways, so rows with equal scores (common on
                # small test sets) stay visible on top of one another.
                shift = 1 + DODGE * (index - (len(by_row) - 1) / 2) / max(1, len(by_row) - 1) * 2
                drawn = [x * shift for x in xs] if key == "lr" else xs
                axis.plot(drawn, means, fillstyle="none", markersize=8 - index % 4, label=name,
                          marker=MARKERS[index % len(MARKERS)], **style(index))  # fmt: skip
            if key == "lr":
                axis.set_xscale("log")
            axis.set_xlabel((LINE_KEYS | BAR_KEYS)[key])
            axis.set_ylabel(f"{primary_metric(scored[0])} (×100, mean over seeds)")
            note = "; bars: two-level 95% interval, dots: seeds" if key in BAR_KEYS else ""
            axis.set_title(f"{task} ({model}, {experiment}){note}", fontsize=9)
            legend_outside(axis)
            written += _save(figure, Path(out_dir) / "figures" / slug(f"{experiment}_{model}_{task}_ablation_{key}"))
    return written



def _bar_groups(axis, by_row, key: str, others: list[str]) -> None:
    """A group of bars per value of ``key`` (eigenvector arm, calibration source), one bar per row that has it, each
    with its two-level 95% interval and a dot per seed (a collapsed seed shows as a dot far from its bar). Rows
    without a value of ``key`` (another method) are left out."""
    present = {}
    for _, rows in sorted(by_row.items(), key=str):
        runs_at = defaultdict(list)
        for result in rows:
            if lookup(result, VARIANT_KEYS[key]) is not None:
                runs_at[str(lookup(result, VARIANT_KEYS[key]))].append(result)
        if runs_at:
            present[row_label(rows[0], others)] = runs_at
    categories = sorted({category for runs_at in present.values() for category in runs_at})
    for index, (name, runs_at) in enumerate(present.items()):
        for k, category in enumerate(categories):
            if category not in runs_at:
                continue
            sharing = [n for n, r in present.items() if category in r]
            width = 0.8 / len(sharing)
            position = k + (sharing.index(name) - (len(sharing) - 1) / 2) * width
            values = [100 * score(r) for r in runs_at[category]]
            mean = statistics.fmean(values)
            axis.bar(position, mean, width=width * 0.95, alpha=0.6, color=style(index)["color"],
                     label=name if category == next(c for c in categories if c in runs_at) else None)  # fmt: skip
            interval = mean_interval(runs_at[category])
            if interval is not None:
                axis.errorbar(position, mean, yerr=[[mean - interval[0]], [interval[1] - mean]], color="0.2",
                              capsize=3, linewidth=1)  # fmt: skip
            axis.plot([position] * len(values), values, "o", color="0.15", markersize=3, fillstyle="none")
    axis.set_xticks(range(len(categories)), categories)


def plot_forest(rows: dict[str, dict[str, tuple[float, float, float]]], xlabel: str, title: str,
                stem: Path) -> list[Path]:  # fmt: skip
    """A forest plot: ``rows``: label -> series -> (difference, low, high) as fractions, drawn x100, top to bottom in
    order; the first series thick, the others thin and offset below it, with a legend (outside) when there are
    several; zero marked."""
    plt = _pyplot()
    labels = list(rows)[::-1]
    series = list(dict.fromkeys(name for row in rows.values() for name in row))
    offsets = [0.12 * (len(series) - 1) - 0.24 * k for k in range(len(series))]  # one series: on the row
    figure, axis = plt.subplots(figsize=(7, 0.8 + (0.4 if len(series) == 1 else 0.6) * max(1, len(labels))))
    for row, label in enumerate(labels):
        for k, name in enumerate(series):
            if name not in rows[label]:
                continue
            difference, low, high = rows[label][name]
            y, colour = row + offsets[k], OKABE_ITO[k % len(OKABE_ITO)]
            axis.plot([100 * low, 100 * high], [y, y], color=colour, linewidth=3 if k == 0 else 1.5,
                      solid_capstyle="butt", label=name if row == 0 else None)  # fmt: skip
            axis.plot(100 * difference, y, "o", color=colour, markersize=5)
    axis.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_ylim(-0.6, len(labels) - 0.4)
    axis.set_xlabel(xlabel)
    axis.set_title(title, fontsize=9)
    if len(series) > 1:
        legend_outside(axis)
    return _save(figure, stem)
