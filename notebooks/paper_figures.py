# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Paper tables and figures from result files
#
# The same functions `make paper` runs (`astra.report`); this notebook holds no logic of its own. Open it with
# jupytext (`jupytext --to notebook notebooks/paper_figures.py`) or run it as a script.

# %%
from pathlib import Path

from astra.report import build_tables, load_results, plot_ablations, plot_training_curves, table_markdown

RESULTS = Path("experiments/results")  # where run.py copies every result file
OUT = Path("experiments/paper/notebook")
FILTERS: list[str] = []  # e.g. ["experiment=nlg_math_smoke"] or ["config.task.family=glue"]

# %%
results = load_results(RESULTS, FILTERS)
print(f"{len(results)} result files, {sum(r['status'] == 'ok' for r in results)} ok")

# %%
for table in build_tables(results):
    print(table_markdown(table))

# %%
ok = [r for r in results if r["status"] == "ok"]
for path in plot_training_curves(ok, OUT) + plot_ablations(ok, OUT):
    print(path)
