"""Figures from result files alone (matplotlib, Agg; PNG and PDF): training curves per task (loss, gradient norm,
effective rank against step, one colour per row label, one thin line per seed) and ablation plots (the primary metric
against a key that varies within a group: rank, calibration size, learning rate (log axis) as lines per method, the
eigenvector arm or calibration source as bars)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from astra.report.results import VARIANT_KEYS, lookup
from astra.report.tables import primary_metric, row_label, score, varying_keys

CURVES = {"train/loss": "training loss", "grad/norm": "gradient norm (pre-clip)", "rank/eff/mean": "effective rank (mean)"}
FIRST_STEPS = 50  # loss and gradient norm are drawn again over the first steps, where the inits differ most
EARLY_CURVES = ("train/loss", "grad/norm")
LINE_KEYS = {"rank": "rank", "n_calib": "calibration samples", "lr": "learning rate"}
BAR_KEYS = {"subspace": "eigenvector arm", "calib_source": "calibration source"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


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
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    colours: dict[str, Any] = {}
    for result in sorted(runs, key=lambda r: row_label(r, varying)):
        name = row_label(result, varying)
        steps, values = series_points(result["series"][series], last_step)
        line = axis.plot(steps, values, linewidth=1, alpha=0.8, color=colours.get(name),
                         label=None if name in colours else name)  # fmt: skip
        colours.setdefault(name, line[0].get_color())
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(label)
    axis.set_title(title)
    axis.legend(fontsize=7)
    return _save(figure, stem)


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
            for index, (_, rows) in enumerate(sorted(by_row.items(), key=str)):
                if key in LINE_KEYS and lookup(rows[0], "config.method.trains") is False:
                    # A model that trains nothing has no rate (rank, ...): a reference level, not a point on the axis.
                    level = statistics.fmean(100 * score(r) for r in rows)
                    label = f"{row_label(rows[0], others)} (no training)"
                    axis.axhline(level, color="grey", linestyle="--", linewidth=1, label=label)
                    continue
                values = defaultdict(list)
                for result in rows:
                    values[lookup(result, VARIANT_KEYS[key])].append(100 * score(result))
                xs = sorted((x for x in values if x is not None), key=lambda x: (isinstance(x, str), x))
                means = [statistics.fmean(values[x]) for x in xs]
                name = row_label(rows[0], others)
                if key in BAR_KEYS:
                    axis.bar([str(x) for x in xs], means, alpha=0.7, label=name)
                else:
                    # Hollow markers of different shapes, so rows with equal scores (common on small test sets)
                    # stay visible on top of one another.
                    style = {"marker": MARKERS[index % len(MARKERS)], "linestyle": LINESTYLES[index % len(LINESTYLES)]}
                    axis.plot(xs, means, fillstyle="none", markersize=8 - index % 4, label=name, **style)
            if key == "lr":
                axis.set_xscale("log")
            axis.set_xlabel((LINE_KEYS | BAR_KEYS)[key])
            axis.set_ylabel(f"{primary_metric(scored[0])} (×100, mean over seeds)")
            axis.set_title(f"{task} ({model}, {experiment})")
            axis.legend(fontsize=7)
            written += _save(figure, Path(out_dir) / "figures" / slug(f"{experiment}_{model}_{task}_ablation_{key}"))
    return written
