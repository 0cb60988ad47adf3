"""Tables in the paper's layout: methods as rows (with trainable parameters), benchmarks as columns, mean ± standard
deviation over seeds (×100, sample standard deviation, none for one seed), the best mean per column in bold, per-family
averages, missing cells shown as missing (never filled), cells from runs with modified tracked files marked †."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astra.report.results import VARIANT_KEYS, lookup

METHOD_ORDER = ["full", "lora", "dora", "pissa", "lora_ga", "astra"]
MISSING = "–"


@dataclass
class Cell:
    values: list[float]
    dirty: bool
    seeds: list[Any] = field(default_factory=list)  # the seed of each value

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Row:
    label: str
    method: str
    trainable: int | None
    total: int | None
    cells: dict[str, Cell] = field(default_factory=dict)
    variant: tuple = ()  # the varying keys' values, for ordering (rank 8 before 16)
    forgetting: dict[str, float] = field(default_factory=dict)  # run file -> generic-text loss increase (causal LMs)


@dataclass
class Table:
    title: str
    tasks: list[str]
    families: dict[str, list[str]]  # family -> its tasks in this table (averaged when it has two or more)
    metrics: dict[str, str]  # task -> the metric shown
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def family_average(self, row: Row, family: str) -> float | None:
        tasks = self.families[family]
        if not all(task in row.cells for task in tasks):
            return None
        return statistics.fmean(row.cells[task].mean for task in tasks)

    def averaged_families(self) -> list[str]:
        return [family for family, tasks in self.families.items() if len(tasks) > 1]


def primary_metric(result: dict[str, Any]) -> str:
    return lookup(result, "config.task.eval.primary_metric") or "accuracy"


def score(result: dict[str, Any]) -> float | None:
    value = (result.get("metrics") or {}).get(primary_metric(result))
    return float(value) if isinstance(value, (int, float)) else None


def row_label(result: dict[str, Any], varying: list[str]) -> str:
    """The method, plus the keys that vary within the table and apply to this result (``astra (subspace=bottom)``).
    A method that trains nothing (``untrained``) has no learning rate to show."""
    trains = lookup(result, "config.method.trains") is not False
    values = [(name, lookup(result, VARIANT_KEYS[name])) for name in varying if trains or name != "lr"]
    extra = ", ".join(f"{name}={value}" for name, value in values if value is not None)
    return f"{result['method']} ({extra})" if extra else str(result["method"])


def varying_keys(results: list[dict[str, Any]]) -> list[str]:
    """Variant keys with two or more values among the results that have the key (seeds are averaged, never keys)."""
    varying = []
    for name, key in VARIANT_KEYS.items():
        values = {repr(value) for r in results if (value := lookup(r, key)) is not None}
        if len(values) > 1:
            varying.append(name)
    return varying


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def build_table(results: list[dict[str, Any]], title: str) -> Table:
    """One table from ok results of one (experiment, model) group."""
    varying = varying_keys(results)
    tasks = sorted({r["task"] for r in results})
    families: dict[str, list[str]] = defaultdict(list)
    for task in tasks:
        family = next(lookup(r, "config.task.family") for r in results if r["task"] == task) or "other"
        families[family].append(task)
    metrics = {task: next(primary_metric(r) for r in results if r["task"] == task) for task in tasks}
    rows: dict[str, Row] = {}
    notes = []
    for result in results:
        label = row_label(result, varying)
        parameters = result.get("parameters") or {}
        variant = tuple((isinstance(v, str), "" if v is None else v) for v in (lookup(result, VARIANT_KEYS[k]) for k in varying))
        row = rows.setdefault(label, Row(label, result["method"], parameters.get("trainable"), parameters.get("total"),
                                         variant=variant))  # fmt: skip
        if isinstance((result.get("metrics") or {}).get("forgetting"), (int, float)):
            row.forgetting[result["_path"]] = float(result["metrics"]["forgetting"])  # once per run, not per benchmark
        value = score(result)
        if value is None:
            notes.append(f"{Path(result['_path']).name}: no {primary_metric(result)!r} metric; left out")
            continue
        cell = row.cells.setdefault(result["task"], Cell([], False))
        cell.values.append(value)
        cell.seeds.append(result.get("seed"))
        cell.dirty |= bool(lookup(result, "git.dirty"))
    ordered = sorted(rows.values(), key=lambda row: (method_rank(row.method), row.variant, row.label))
    return Table(title, tasks, dict(families), metrics, ordered, notes)


def _parameters(row: Row) -> str:
    if not row.trainable:
        return MISSING
    count = f"{row.trainable / 1e6:.2f}M" if row.trainable >= 1e4 else str(row.trainable)
    return f"{count} ({100 * row.trainable / row.total:.2f}%)" if row.total else count


def _best(table: Table, column: str) -> float | None:
    means = [row.cells[column].mean for row in table.rows if column in row.cells]
    return max(means) if means else None


def _format_cell(cell: Cell | None, best: float | None, n_max: int, bold: tuple[str, str]) -> str:
    if cell is None:
        return MISSING
    text = f"{100 * cell.mean:.1f}" + (f" ± {100 * cell.std:.1f}" if cell.std is not None else "")
    if len(cell.values) != n_max:
        text += f" (n={len(cell.values)})"
    if best is not None and cell.mean == best:
        text = f"{bold[0]}{text}{bold[1]}"
    return text + ("†" if cell.dirty else "")


def _forgetting(row: Row) -> str:
    values = list(row.forgetting.values())
    if not values:
        return MISSING
    return f"{statistics.fmean(values):+.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def _grid(table: Table, bold: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    families = table.averaged_families()
    header = ["method", "trainable", *[f"{t} ({table.metrics[t]})" for t in table.tasks], *[f"avg {f}" for f in families]]
    with_forgetting = any(row.forgetting for row in table.rows)
    if with_forgetting:
        header.append("forgetting (nats)")
    n_max = max((len(c.values) for row in table.rows for c in row.cells.values()), default=1)
    best = {task: _best(table, task) for task in table.tasks}
    family_best = {f: max((v for r in table.rows if (v := table.family_average(r, f)) is not None), default=None)
                   for f in families}  # fmt: skip
    body = []
    for row in table.rows:
        cells = [_format_cell(row.cells.get(task), best[task], n_max, bold) for task in table.tasks]
        averages = []
        for family in families:
            value = table.family_average(row, family)
            text = MISSING if value is None else f"{100 * value:.1f}"
            averages.append(f"{bold[0]}{text}{bold[1]}" if value is not None and value == family_best[family] else text)
        body.append([row.label, _parameters(row), *cells, *averages, *([_forgetting(row)] if with_forgetting else [])])
    return header, body


def _footnotes(table: Table) -> list[str]:
    notes = ["Mean ± sample standard deviation over seeds, ×100; (n=k): k seeds where other cells have more; "
             f"{MISSING}: not run; best mean per column in bold."]  # fmt: skip
    if any(row.forgetting for row in table.rows):
        notes.append("forgetting: the generic-text loss after training minus before (nats per token; lower forgets less), "
                     "mean ± sample standard deviation over the row's training runs.")
    if any(cell.dirty for row in table.rows for cell in row.cells.values()):
        notes.append("†: from a run whose tracked files were modified (git dirty).")
    return notes + table.notes


def table_markdown(table: Table) -> str:
    header, body = _grid(table, ("**", "**"))
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join([*lines, "", *_footnotes(table)]) + "\n"


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace("†", r"$^\dagger$").replace("×", r"$\times$").replace(MISSING, "--")


def table_latex(table: Table) -> str:
    header, body = _grid(table, ("BOLDOPEN", "BOLDCLOSE"))
    columns = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{columns}}}", r"\toprule", " & ".join(_latex_escape(h) for h in header) + r" \\",
             r"\midrule"]  # fmt: skip
    for row in body:
        cells = [_latex_escape(c).replace("BOLDOPEN", r"\textbf{").replace("BOLDCLOSE", "}") for c in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\footnotesize {_latex_escape(note)}" for note in _footnotes(table)]
    return "\n".join([*lines, r"\end{table}"]) + "\n"


def seeds_markdown(table: Table) -> str | None:
    """Each cell's value per seed (×100, seeds in order), for tables where some cell has more than one seed: the
    spread a mean ± sd summarises, and which seed gave what. None when every cell has one seed."""
    if all(len(cell.values) <= 1 for row in table.rows for cell in row.cells.values()):
        return None
    seeds = sorted({seed for row in table.rows for c in row.cells.values() for seed in c.seeds}, key=str)
    header = ["method", *[f"{task} (seeds {' / '.join(map(str, seeds))})" for task in table.tasks]]
    lines = [f"### {table.title}: per seed", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        texts = []
        for task in table.tasks:
            cell = row.cells.get(task)
            by_seed = {} if cell is None else dict(zip(cell.seeds, cell.values))
            texts.append(" / ".join(f"{100 * by_seed[seed]:.1f}" if seed in by_seed else MISSING for seed in seeds))
        lines.append("| " + " | ".join([row.label, *texts]) + " |")
    notes = [f"The primary metric (as in the main table) ×100 per seed; {MISSING}: that seed not run."]
    return "\n".join([*lines, "", *notes]) + "\n"
