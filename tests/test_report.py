"""The report (make paper) on a fixture set of result files: tables equal golden files (numbers checked by hand
below), figures are written (ablation plots only for the key that varies), filters select, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra.report import build_tables, load_results, table_latex, table_markdown, write_report
from astra.report.__main__ import main

GOLDEN = Path(__file__).parent / "fixtures" / "report"
FAMILY = {"gsm8k": "math", "arc_e": "commonsense", "piqa": "commonsense"}


def result(method, task, seed, value, *, experiment="fx", status="ok", dirty=False, created="2026-11-23T10:00:00",
           rank=8, **extra):  # fmt: skip
    steps = list(range(1, 6))
    return {
        "method": method, "task": task, "model": "tiny", "seed": seed, "rank": rank, "learning_rate": 1e-3,
        "experiment": experiment, "status": status, "created": created, "git": {"dirty": dirty},
        "error": "ValueError: boom" if status != "ok" else None,
        "config": {"seed": seed, "rank": rank, "method": {"name": method}, "task": {"name": task, "family": FAMILY[task],
                   "eval": {"primary_metric": "accuracy"}}, "experiment_name": experiment},
        "metrics": {"accuracy": value} if value is not None else {},
        "parameters": {"trainable": 40000, "total": 1000000},
        "series": {"train/loss": {"step": steps, "value": [2.0 / s for s in steps]},
                   "grad/norm": {"step": steps, "value": [1.0 + seed / s for s in steps]}},
        **extra,
    }  # fmt: skip


def items(correct: list[int]) -> dict:
    return {"ids": ["a", "b", "c", "d"], "correct": correct}


def fixture_results() -> list[dict]:
    return [
        result("lora", "gsm8k", 1, 0.10, created="2026-11-22T10:00:00"),  # an older duplicate of the next: dropped
        result("lora", "gsm8k", 1, 0.50, items=items([1, 0, 0, 1])),
        result("lora", "gsm8k", 2, 0.60, items=items([1, 1, 0, 1])),  # 55.0 ± 7.1 (sample std of 50, 60 = 7.07)
        result("astra", "gsm8k", 1, 0.60, items=items([1, 1, 0, 1])),
        result("astra", "gsm8k", 2, 0.70, dirty=True, items=items([1, 1, 1, 1])),  # 65.0 ± 7.1, best, dagger
        result("lora", "arc_e", 1, 0.40),
        result("lora", "arc_e", 2, 0.40),  # 40.0 ± 0.0
        result("astra", "arc_e", 1, 0.45),  # one seed: 45.0 (n=1), best
        result("astra", "arc_e", 2, None, status="failed"),  # listed in failed.md, not in the table
        result("lora", "piqa", 1, 0.70),
        result("lora", "piqa", 2, 0.80),  # 75.0 ± 7.1; astra has no piqa run: missing, and no commonsense average
        *[result("astra", "gsm8k", 1, value, experiment="ablation_rank", rank=rank)
          for rank, value in ((8, 0.2), (16, 0.3), (32, 0.25))],  # fmt: skip
    ]


@pytest.fixture
def results_dir(tmp_path):
    folder = tmp_path / "results"
    for k, item in enumerate(fixture_results()):
        path = folder / item["experiment"] / f"{k:02d}-{item['method']}-{item['task']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(item))
    (folder / "fx" / "notes.json").write_text(json.dumps({"not": "a result"}))  # ignored
    old = folder / "fx" / "superseded" / "old-grid.json"  # kept for the record, never reported
    old.parent.mkdir()
    old.write_text(json.dumps(result("lora", "gsm8k", 1, 0.99, created="2026-11-30T10:00:00")))  # newest: would win
    return folder


def test_tables_equal_the_golden_files(results_dir):
    tables = build_tables(load_results(results_dir))
    assert [t.title for t in tables] == ["ablation_rank: tiny", "fx: tiny"]
    markdown = "\n".join(table_markdown(t) for t in tables)
    latex = "\n".join(table_latex(t) for t in tables)
    # The hand-checked cells, before the whole-text comparison.
    assert "| astra | 0.04M (4.00%) | 45.0 (n=1) | **65.0 ± 7.1**† | – | – |" not in markdown  # columns are sorted
    fx = table_markdown(tables[1])
    assert "| astra | 0.04M (4.00%) | **45.0 (n=1)** | **65.0 ± 7.1**† | – | – |" in fx
    assert "| lora | 0.04M (4.00%) | 40.0 ± 0.0 | 55.0 ± 7.1 | **75.0 ± 7.1** | **57.5** |" in fx  # (40 + 75) / 2
    assert "duplicates" in fx and "†: from a run whose tracked files were modified" in fx
    assert "| astra (rank=8) |" in table_markdown(tables[0]) and "**30.0**" in table_markdown(tables[0])
    assert markdown == (GOLDEN / "golden_table.md").read_text(encoding="utf-8")
    assert latex == (GOLDEN / "golden_table.tex").read_text(encoding="utf-8")


def test_write_report_tables_failed_list_figures_and_index(results_dir, tmp_path):
    out = tmp_path / "paper"
    written = write_report(results_dir, out)
    names = {p.name for p in written}
    assert {"fx_tiny.md", "fx_tiny.tex", "ablation_rank_tiny.md", "failed.md", "index.md"} <= names
    assert "ValueError: boom" in (out / "failed.md").read_text()
    figures = [p for p in written if p.parent.name == "figures"]
    assert all(p.stat().st_size > 1000 for p in figures)
    assert {"fx_tiny_gsm8k_train-loss.png", "fx_tiny_gsm8k_grad-norm.pdf", "fx_tiny_gsm8k_train-loss_first50.png",
            "fx_tiny_gsm8k_grad-norm_first50.pdf"} <= {p.name for p in figures}  # fmt: skip
    assert not any("rank-eff-mean_first50" in p.name for p in figures)  # effective rank: whole run only
    assert "fx_tiny_vs_lora_forest.png" in {p.name for p in figures}  # the vs-LoRA two-level intervals, drawn
    from astra.report.figures import series_points

    assert series_points({"step": [1, 50, 51, 99], "value": [4, 3, 2, 1]}, 50) == ([1, 50], [4, 3])
    assert series_points({"step": [1, 50, 51], "value": [4, 3, 2]}) == ([1, 50, 51], [4, 3, 2])
    ablations = sorted(p.name for p in figures if any(f"_{task}_ablation_" in p.name for task in FAMILY))
    assert ablations == ["ablation_rank_tiny_gsm8k_ablation_rank.pdf", "ablation_rank_tiny_gsm8k_ablation_rank.png"]
    assert (out / "figures" / "fx_tiny_gsm8k_train-loss.png").read_bytes()[:4] == b"\x89PNG"
    assert all(p.name in (out / "index.md").read_text() for p in written if p.name != "index.md")
    again = write_report(results_dir, tmp_path / "again")  # byte-identical: committed figures do not churn
    assert [p.read_bytes() for p in again if p.parent.name == "figures"] == [p.read_bytes() for p in figures]


def test_filters_select_and_bad_input_is_refused(results_dir, tmp_path, capsys):
    assert {r["experiment"] for r in load_results(results_dir, ["experiment=fx"])} == {"fx"}
    assert {r["task"] for r in load_results(results_dir, ["config.task.family=commonsense", "method=lora"])} == {"arc_e", "piqa"}
    assert len(load_results(results_dir, ["git.dirty=true"])) == 1
    (results_dir / "fx" / "truncated.json").write_text('{"method": "lora", "task":')  # a cut-short write
    with pytest.warns(UserWarning, match=r"skipping .*truncated\.json: not a readable JSON file"):
        assert len(load_results(results_dir, ["git.dirty=true"])) == 1  # the readable results are still reported
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "o"), "--filter", "foo"]) == 2
    assert "--filter 'foo' is not valid: expected key=value" in capsys.readouterr().err
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "o"), "--filter", "method=nope"]) == 2
    assert "no result files matching ['method=nope']" in capsys.readouterr().err
    assert main(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "o"), "--format", "md,html"]) == 2
    assert main(["--results", str(results_dir), "--out", str(tmp_path / "o"), "--no-figures"]) == 0
    assert not (tmp_path / "o" / "figures").exists() and (tmp_path / "o" / "tables" / "fx_tiny.tex").is_file()


def test_a_real_run_reports(tmp_path):
    """A result file written by run.py carries what the report reads (series included)."""
    from conftest import compose_config

    from astra.run import runner

    cfg = compose_config(tmp_path, ["method=astra", "trainer=debug", "logger=none", "trainer.eval_limit=2",
                                    "task.eval.max_new_tokens=4", "forgetting.enabled=false"])  # fmt: skip
    runner.train(cfg, overrides=[])
    items = json.loads((tmp_path / "run" / "result.json").read_text())["items"]
    assert len(items["ids"]) == len(items["correct"]) == 2 and set(items["correct"]) <= {0, 1}
    written = write_report(tmp_path / "results", tmp_path / "paper")
    assert any(p.name.endswith("_train-loss.png") for p in written)
    assert any(p.name.endswith("_rank-eff-mean.png") for p in written)
    assert "| astra |" in (tmp_path / "paper" / "tables" / "default_tiny_llama.md").read_text()


def test_notebook_runs_on_the_fixture_results(results_dir, tmp_path, monkeypatch):
    """The notebook (a jupytext script) calls the package only: run it against the fixture results."""
    import runpy

    source = (Path(__file__).resolve().parents[1] / "notebooks" / "paper_figures.py").read_text()
    script = tmp_path / "notebook.py"
    script.write_text(source.replace('Path("experiments/results")', f'Path("{results_dir}")')
                      .replace('Path("experiments/paper/notebook")', f'Path("{tmp_path / "nb"}")'))  # fmt: skip
    runpy.run_path(str(script))
    assert list((tmp_path / "nb" / "figures").glob("*.png"))


def test_difference_to_lora_with_a_paired_bootstrap_interval(results_dir, tmp_path):
    from astra.report import paired_interval

    write_report(results_dir, tmp_path / "paper", figures=False)
    text = (tmp_path / "paper" / "tables" / "fx_tiny_vs_lora.md").read_text()
    # Per item over seeds: lora a 1, b 1/2, c 0, d 1; astra a 1, b 1, c 1/2, d 1 -> differences 0, 1/2, 1/2, 0: +25.0.
    assert "| astra | +25.0 [" in text and "Items compared: gsm8k 4" in text  # tasks with item outcomes only
    mean, low, high, n = paired_interval({"a": 1, "b": 1, "c": 0.5, "d": 1}, {"a": 1, "b": 0.5, "c": 0, "d": 1})
    assert (mean, n) == (0.25, 4) and 0.0 <= low <= mean <= high <= 0.5  # resampled means of {0, 1/2} values
    assert paired_interval({"a": 1.0}, {"b": 1.0}) is None  # no common item


def test_differences_compare_only_the_seeds_both_rows_have(tmp_path):
    folder = tmp_path / "results" / "fx"
    folder.mkdir(parents=True)
    runs = [result("lora", "gsm8k", 1, 0.5, items=items([1, 1, 0, 0])),
            result("lora", "gsm8k", 2, 0.0, items=items([0, 0, 0, 0])),  # a bad seed astra has not run yet
            result("astra", "gsm8k", 1, 0.5, items=items([1, 1, 0, 0]))]  # fmt: skip
    for k, run in enumerate(runs):
        (folder / f"{k}.json").write_text(json.dumps(run))
    write_report(tmp_path / "results", tmp_path / "paper", figures=False)
    text = (tmp_path / "paper" / "tables" / "fx_tiny_vs_lora.md").read_text()
    assert "| astra | +0.0 [+0.0, +0.0] |" in text  # seed 1 against seed 1; with lora's seed 2 it would be +25.0


def test_a_suite_result_is_a_column_per_benchmark(tmp_path):
    suite = result("astra", "arc_e", 1, 0.5, items={"ids": ["arc_e-1", "arc_e-2", "piqa-1", "piqa-2"], "correct": [1, 0, 1, 1]})
    suite["task"] = "commonsense_suite"
    suite["config"]["task"] = {"name": "commonsense_suite", "family": "commonsense", "benchmarks": ["arc_e", "piqa"],
                               "eval": {"primary_metric": "accuracy"}}  # fmt: skip
    suite["metrics"] = {"accuracy": 0.75, "accuracy_arc_e": 0.5, "accuracy_piqa": 1.0}
    folder = tmp_path / "results" / "fx"
    folder.mkdir(parents=True)
    (folder / "suite.json").write_text(json.dumps(suite))
    (table,) = build_tables(load_results(tmp_path / "results"))
    assert table.tasks == ["arc_e", "piqa"]
    assert "| astra | 0.04M (4.00%) | **50.0** | **100.0** | **75.0** |" in table_markdown(table)


def test_suite_forgetting_is_one_column_per_row_and_untrained_shows_no_rate(tmp_path):
    folder = tmp_path / "results" / "fx"
    folder.mkdir(parents=True)
    runs = []
    for seed, forgetting in ((1, 0.10), (2, 0.30)):  # one figure per training run: +0.200 ± 0.141, never per benchmark
        suite = result("lora", "arc_e", seed, 0.5, items={"ids": ["arc_e-1", "piqa-1"], "correct": [1, 0]})
        suite["task"] = "commonsense_suite"
        suite["config"]["task"] = {"name": "commonsense_suite", "family": "commonsense", "benchmarks": ["arc_e", "piqa"],
                                   "eval": {"primary_metric": "accuracy"}}  # fmt: skip
        suite["metrics"] = {"accuracy": 0.5, "accuracy_arc_e": 1.0, "accuracy_piqa": 0.0, "forgetting": forgetting}
        runs.append(suite)
    untrained = json.loads(json.dumps(runs[0]))
    untrained.update(method="untrained", learning_rate=5e-4)  # its configured rate differs: lr varies in the table
    untrained["config"]["method"] = {"name": "untrained", "trains": False}
    untrained["metrics"]["forgetting"] = 0.0
    for k, item in enumerate([*runs, untrained]):
        (folder / f"{k}.json").write_text(json.dumps(item))
    (table,) = build_tables(load_results(tmp_path / "results"))
    text = table_markdown(table)
    assert "| avg commonsense | forgetting (nats) |" in text
    assert "| lora (lr=0.001) | 0.04M (4.00%) | **100.0 ± 0.0** | **0.0 ± 0.0** | **50.0** | +0.200 ± 0.141 |" in text
    assert "| untrained | 0.04M (4.00%) | **100.0 (n=1)** | **0.0 (n=1)** | **50.0** | +0.000 |" in text


def test_a_table_with_several_seeds_gets_a_per_seed_table(results_dir, tmp_path):
    from astra.report.tables import seeds_markdown

    fx, ablation = build_tables(load_results(results_dir))[1], build_tables(load_results(results_dir))[0]
    text = seeds_markdown(fx)
    assert text.startswith("### fx: tiny: per seed")
    assert "| method | arc_e (seeds 1 / 2) | gsm8k (seeds 1 / 2) | piqa (seeds 1 / 2) |" in text
    assert "| astra | 45.0 / – | 60.0 / 70.0 | – / – |" in text  # the failed seed 2 of arc_e is missing, not zero
    assert "| lora | 40.0 / 40.0 | 50.0 / 60.0 | 70.0 / 80.0 |" in text  # the newer of the duplicate seed-1 runs
    assert seeds_markdown(ablation) is None  # one seed per cell: nothing to spread
    written = {p.name for p in write_report(results_dir, tmp_path / "paper", figures=False)}
    assert "fx_tiny_seeds.md" in written and "ablation_rank_tiny_seeds.md" not in written


def test_a_file_an_earlier_report_wrote_and_this_one_does_not_is_removed(results_dir, tmp_path):
    out = tmp_path / "paper"
    write_report(results_dir, out, figures=False)
    assert (out / "tables" / "fx_tiny_vs_lora.md").is_file()
    mine = out / "tables" / "my_notes.md"  # not the report's: never touched
    mine.write_text("keep")
    (results_dir / "fx" / "00-lora-gsm8k.json").write_text(
        json.dumps(result("lora", "gsm8k", 1, 0.3, created="2026-11-24T10:00:00", rank=16, experiment="fx")))
    written = {p.name for p in write_report(results_dir, out, figures=False)}  # two lora rows now: no baseline
    assert "fx_tiny_vs_lora.md" not in written and not (out / "tables" / "fx_tiny_vs_lora.md").exists()
    assert (out / "tables" / "fx_tiny.md").is_file() and mine.read_text() == "keep"


def test_a_suite_gets_a_pooled_column_over_every_tasks_items(tmp_path):
    folder = tmp_path / "results" / "fx"
    folder.mkdir(parents=True)
    runs = [result("lora", "gsm8k", 1, 0.25, items=items([1, 0, 0, 0])),
            result("lora", "arc_e", 1, 0.0, items=items([0, 0, 0, 0])),
            result("astra", "gsm8k", 1, 0.5, items=items([1, 1, 0, 0])),
            result("astra", "arc_e", 1, 1.0, items=items([1, 1, 1, 1]))]  # fmt: skip
    for k, run in enumerate(runs):
        (folder / f"{k}.json").write_text(json.dumps(run))
    write_report(tmp_path / "results", tmp_path / "paper", figures=False)
    text = (tmp_path / "paper" / "tables" / "fx_tiny_vs_lora.md").read_text()
    assert "| method | arc_e | gsm8k | all items |" in text
    # the two tasks share item ids a..d: pooled, they stay 8 items; differences 1,1,1,1 and 0,1,0,0: 5/8
    assert "| astra | +100.0 [+100.0, +100.0] | +25.0 [" in text and "| +62.5 [" in text
    assert "all items 8" in text


def test_rate_sweep_plot_draws_the_untrained_row_as_a_level_and_keeps_tied_rows_visible(monkeypatch):
    from astra.report import figures

    runs = [result(method, "gsm8k", 1, value, experiment="sweep", learning_rate=lr)
            for method in ("lora", "dora") for lr, value in ((1e-4, 0.5), (1e-3, 0.75))]  # fmt: skip
    untrained = result("untrained", "gsm8k", 1, 0.25, experiment="sweep", learning_rate=2e-4)
    untrained["config"]["method"] = {"name": "untrained", "trains": False}
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda figure, path: drawn.append((path.name, figure)) or [])
    figures.plot_ablations([*runs, untrained], "unused")
    (name, figure), = drawn  # fmt: skip
    assert name == "sweep_tiny_gsm8k_ablation_lr"
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"dora", "lora", "untrained (no training)"}
    level = lines["untrained (no training)"]
    assert list(level.get_ydata()) == [25.0, 25.0] and list(level.get_xdata()) == [0, 1]  # across the axis, no rate
    assert list(lines["lora"].get_ydata()) == [50.0, 75.0]
    assert list(lines["lora"].get_xdata()) == pytest.approx([1e-4, 1e-3], rel=0.06)  # at its rates, dodged by <= 5%
    # dora ties lora at every rate: another colour and marker, and dodged sideways, keep both visible
    assert lines["dora"].get_marker() != lines["lora"].get_marker()
    assert lines["dora"].get_color() != lines["lora"].get_color()
    assert all(d != lo for d, lo in zip(lines["dora"].get_xdata(), lines["lora"].get_xdata()))
