"""Tables and figures regenerated from result files alone: ``make paper`` / ``python -m astra.report``.

    python -m astra.report --results experiments/results --out experiments/paper --filter experiment=nlg_math

Notebooks call the same functions (``load_results``, ``build_tables``, ``table_markdown``, ``plot_training_curves``,
``plot_ablations``, ``write_report``); nothing here reads W&B.
"""

from astra.report.figures import plot_ablations, plot_training_curves
from astra.report.intervals import difference_table, paired_interval
from astra.report.results import load_results, newest_per_cell, parse_filters
from astra.report.tables import Table, build_table, table_latex, table_markdown
from astra.report.write import build_tables, write_report

__all__ = [
    "Table",
    "build_table",
    "build_tables",
    "difference_table",
    "load_results",
    "newest_per_cell",
    "paired_interval",
    "parse_filters",
    "plot_ablations",
    "plot_training_curves",
    "table_latex",
    "table_markdown",
    "write_report",
]
