"""The whole report: tables per (experiment, model), a list of runs that did not finish ok, figures, an index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astra.report.figures import group_by, plot_ablations, plot_forest, plot_training_curves, slug
from astra.report.intervals import difference_table
from astra.report.results import expand_suites, load_results, newest_per_cell
from astra.report.tables import Table, build_table, seeds_markdown, table_latex, table_markdown

FORMATS = ("md", "tex")


def split_ok(results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(ok results, newest per cell; the others; notes on dropped duplicates)."""
    ok = [r for r in results if r.get("status") == "ok"]
    kept, notes = newest_per_cell(ok)
    return kept, [r for r in results if r.get("status") != "ok"], notes


def per_benchmark(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Suite results split into one result per benchmark (tables and intervals have a column per benchmark)."""
    return expand_suites(results)


def build_tables(results: list[dict[str, Any]]) -> list[Table]:
    """One table per (experiment, model) of the ok results, duplicates reduced to the newest."""
    ok, _, notes = split_ok(results)
    tables = []
    for (experiment, model), group in sorted(group_by(per_benchmark(ok), "experiment", "model").items(), key=str):
        table = build_table(group, f"{experiment}: {model}")
        table.notes += [note for note in notes if any(Path(r["_path"]).name in note for r in group)]
        tables.append(table)
    return tables


def _failed_markdown(failed: list[dict[str, Any]]) -> str:
    lines = ["# Runs that did not finish ok", "", "Not in any table.", "", "| status | experiment | method | task | seed | error | file |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(failed, key=lambda r: r["_path"]):
        error = (r.get("error") or "").strip().splitlines()
        lines.append(f"| {r.get('status')} | {r.get('experiment')} | {r.get('method')} | {r.get('task')} | {r.get('seed')} | "
                     f"{(error[-1] if error else '').replace('|', '/')[:160]} | {Path(r['_path']).name} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path, out_dir: str | Path, filters: list[str] | tuple[str, ...] = (),
                 formats: tuple[str, ...] = FORMATS, figures: bool = True) -> list[Path]:  # fmt: skip
    """Write tables (``formats``), ``failed.md``, figures and ``index.md`` into ``out_dir``; returns the files."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"--format {','.join(bad)} is not valid; expected a comma-separated subset of {list(FORMATS)}")
    results = load_results(results_dir, filters)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = _listed_in_index(out)
    written: list[Path] = []
    for table in build_tables(results):
        stem = out / "tables" / slug(table.title.replace(": ", "_"))
        stem.parent.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            path.write_text(table_markdown(table) if fmt == "md" else table_latex(table), encoding="utf-8")
            written.append(path)
        per_seed = seeds_markdown(table) if "md" in formats else None
        if per_seed is not None:
            path = stem.with_name(f"{stem.name}_seeds.md")
            path.write_text(per_seed, encoding="utf-8")
            written.append(path)
    ok, failed, _ = split_ok(results)
    if "md" in formats:  # each row against LoRA, with paired bootstrap intervals over test items
        for (experiment, model), group in sorted(group_by(per_benchmark(ok), "experiment", "model").items(), key=str):
            headline: dict = {}
            text = difference_table(group, f"{experiment}: {model}", headline=headline)
            if text is not None:
                path = out / "tables" / f"{slug(f'{experiment}_{model}')}_vs_lora.md"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                written.append(path)
            if figures and headline:  # the same intervals as a forest plot
                stem = out / "figures" / f"{slug(f'{experiment}_{model}')}_vs_lora_forest"
                rows = {label: {"two-level": (i.difference, i.low, i.high)} for label, i in headline.items()}
                xlabel = "difference to lora (points), 95% two-level bootstrap interval (seeds and items)"
                written += plot_forest(rows, xlabel, f"{experiment}: {model}, all test items", stem)
    if failed:
        (out / "failed.md").write_text(_failed_markdown(failed), encoding="utf-8")
        written.append(out / "failed.md")
    if figures:
        written += plot_training_curves(ok, out) + plot_ablations(ok, out)
    index = ["# Report", "", f"From {len(results)} result files below `{results_dir}`"
             + (f" matching {list(filters)}" if filters else "") + f" ({len(ok)} ok, {len(failed)} not).", ""]  # fmt: skip
    index += [f"- [{p.relative_to(out)}]({p.relative_to(out)})" for p in written]
    (out / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    for stale in previous - {p.resolve() for p in written}:  # e.g. a _vs_lora table whose baseline is no longer one row
        stale.unlink(missing_ok=True)
    return [*written, out / "index.md"]


def _listed_in_index(out: Path) -> set[Path]:
    """The files an earlier report wrote into ``out`` (its index.md lists them), so those it no longer writes go."""
    index = out / "index.md"
    if not index.is_file():
        return set()
    listed = set()
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.startswith("- [") and "](" in line and line.endswith(")"):
            path = (out / line[line.index("](") + 2 : -1]).resolve()
            if path.parent.parent == out.resolve() and path.parent.name in ("tables", "figures"):
                listed.add(path)  # only the report's own folders: never anything else below out
    return listed
