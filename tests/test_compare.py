"""python -m astra.compare: the selection rule, the intervals against hand computations, and a whole small
comparison (experiment=compare_smoke, the tiny BERT) through the command, checked against its own result files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean

import pytest
import torch

from astra.compare.__main__ import main
from astra.compare.protocol import load_protocol
from astra.compare.selection import collapse_reason, decide, widened_rate
from astra.report.intervals import paired_interval
from astra.report.seed_intervals import MDD_FACTOR, item_only_interval, two_level_interval


def cell(score, counts=None):
    return {"metrics": {"accuracy": score}, "prediction_counts": counts}


def test_the_rule_excludes_collapsed_rates_and_picks_the_best_mean():
    grid = [1e-4, 3e-4, 1e-3, 3e-3]
    cells = {
        (1e-4, 0): cell(0.70), (1e-4, 1): cell(0.72),
        (3e-4, 0): cell(0.80), (3e-4, 1): cell(0.78),
        (1e-3, 0): cell(0.90), (1e-3, 1): cell(0.50, {"0": 10}),  # one seed predicted one class: excluded
        (3e-3, 0): cell(0.85), (3e-3, 1): cell(0.55),  # 0.55 <= the untrained model's 0.55 at seed 1: excluded
    }  # fmt: skip
    decision = decide(grid, cells, [0, 1], "accuracy", untrained={0: 0.5, 1: 0.55})
    assert decision["chosen"] == 3e-4 and decision["edge"] is None  # 0.79 beats 0.71; 1e-3's 0.70 mean is out anyway
    assert decision["rates"]["0.001"]["collapsed"] == {1: "predicted class '0' for all 10 items"}
    assert "<= the untrained model's 0.55" in decision["rates"]["0.003"]["collapsed"][1]
    assert decision["rates"]["0.0003"]["mean"] == pytest.approx(0.79)


def test_the_rule_breaks_ties_low_flags_edges_and_widens_down_when_nothing_is_left():
    tie = decide([1e-3, 3e-3, 1e-2], {(r, 0): cell(0.8) for r in (1e-3, 3e-3, 1e-2)}, [0], "accuracy", {0: 0.5})
    assert tie["chosen"] == 1e-3 and tie["edge"] == "low"
    high = decide([1e-3, 3e-3], {(1e-3, 0): cell(0.6), (3e-3, 0): cell(0.7)}, [0], "accuracy", {})
    assert high["chosen"] == 3e-3 and high["edge"] == "high"
    none = decide([1e-3], {(1e-3, 0): cell(0.5, {"1": 4})}, [0], "accuracy", {})
    assert none["chosen"] is None and none["edge"] == "low"
    assert widened_rate([1e-4, 3e-4, 1e-3], "high") == pytest.approx(3e-3)  # a half-decade grid stays one
    assert widened_rate([1e-4, 3e-4, 1e-3], "low") == pytest.approx(3e-5)
    assert widened_rate([1e-3], "low") == pytest.approx(3e-4)
    assert widened_rate([1.25e-5, 2.5e-5], "low") == pytest.approx(6.25e-6)
    assert collapse_reason(cell(0.9, {"0": 3, "1": 7}), "accuracy", 0.5) is None


def test_the_worst_seed_rule_prefers_the_rate_every_seed_trains_at():
    """select.statistic: worst_seed: the rate whose lowest seed is best (here 3e-4: 0.74 against 1e-3's 0.66,
    though 1e-3 has the better mean, 0.714 against 0.707 — the published compare_qnli astra_random pair); the mean
    breaks a tie of lowest scores; a collapsed rate is still out."""
    grid = [1e-4, 3e-4, 1e-3, 3e-3]
    cells = {
        (1e-4, 0): cell(0.506), (1e-4, 1): cell(0.538),
        (3e-4, 0): cell(0.670), (3e-4, 1): cell(0.744),
        (1e-3, 0): cell(0.660), (1e-3, 1): cell(0.768),
        (3e-3, 0): cell(0.95), (3e-3, 1): cell(0.476, {"0": 500}),
    }  # fmt: skip
    assert decide(grid, cells, [0, 1], "accuracy", {0: 0.5, 1: 0.5})["chosen"] == 1e-3
    worst = decide(grid, cells, [0, 1], "accuracy", {0: 0.5, 1: 0.5}, statistic="worst_seed")
    assert worst["chosen"] == 3e-4 and worst["edge"] is None
    tied = {(1e-4, 0): cell(0.7), (1e-4, 1): cell(0.7), (3e-4, 0): cell(0.7), (3e-4, 1): cell(0.8)}
    assert decide([1e-4, 3e-4], tied, [0, 1], "accuracy", {}, statistic="worst_seed")["chosen"] == 3e-4


def outcomes(matrix):
    return {seed: {f"item{i}": float(v) for i, v in enumerate(row)} for seed, row in enumerate(matrix)}


def test_two_level_interval_matches_the_analytic_variance_of_resampling_seeds_and_items():
    """For D[s, i] = a_s + b_i, resampling seeds and items independently gives a mean whose variance is exactly
    var(a) / S + var(b) / I (population variances): the bootstrap SE must match it, and the MDD is 2.80 x SE."""
    a = torch.tensor([0.10, -0.05, 0.20, 0.0], dtype=torch.float64)  # seed effects
    b = torch.linspace(-0.3, 0.3, 50, dtype=torch.float64)  # item effects
    difference = a[:, None] + b[None, :]
    zeros = torch.zeros_like(difference)
    interval = two_level_interval(outcomes(difference.tolist()), outcomes(zeros.tolist()), samples=40_000)
    expected_se = math.sqrt(a.var(unbiased=False) / 4 + b.var(unbiased=False) / 50)
    assert interval.difference == pytest.approx(float(difference.mean()))
    assert interval.standard_error == pytest.approx(expected_se, rel=0.03)
    assert interval.minimum_detectable == pytest.approx(MDD_FACTOR * interval.standard_error)
    assert interval.seeds_paired and interval.items == 50
    assert interval.low < interval.difference < interval.high
    # Only items vary: the seed level adds nothing, and the two intervals agree
    flat = (torch.zeros(3, 1, dtype=torch.float64) + b[None, :]).tolist()
    two, items = (
        two_level_interval(outcomes(flat), outcomes(zeros[:3].tolist())),
        item_only_interval(outcomes(flat), outcomes(zeros[:3].tolist())),
    )
    assert two.standard_error == pytest.approx(items.standard_error, rel=0.05)


def test_item_only_interval_is_the_reports_paired_item_bootstrap_and_seeds_unpaired_when_not_shared():
    rng = torch.Generator().manual_seed(1)
    a = (torch.rand(3, 40, generator=rng) > 0.3).double().tolist()
    b = (torch.rand(3, 40, generator=rng) > 0.5).double().tolist()
    ours = item_only_interval(outcomes(a), outcomes(b))
    mean_a = {f"item{i}": fmean(row[i] for row in a) for i in range(40)}
    mean_b = {f"item{i}": fmean(row[i] for row in b) for i in range(40)}
    reference = paired_interval(mean_a, mean_b)  # the report's item bootstrap, written independently
    assert (ours.difference, ours.low, ours.high) == pytest.approx(reference[:3])
    moved = {seed + 10: row for seed, row in outcomes(b).items()}  # no shared seed: each side's seeds drawn alone
    unpaired = two_level_interval(outcomes(a), moved)
    assert not unpaired.seeds_paired and unpaired.seeds_a == 3 and unpaired.seeds_b == 3


def results_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_whole_small_comparison_through_the_command(tmp_path, capsys):
    """experiment=compare_smoke end to end: chosen rates equal the rule recomputed by hand from the selection result
    files, a collapsed arm is excluded, the report's numbers are the test files', and a second run resumes (no cell
    runs again)."""
    paths = [f"paths.root_dir={tmp_path}"]
    assert main(["experiment=compare_smoke", *paths]) == 0
    results = tmp_path / "experiments" / "results"
    chosen = json.loads((results / "compare_smoke" / "chosen_rates.json").read_text())
    select = [r for r in results_in(results / "compare_smoke_select") if r["status"] == "ok"]
    untrained = {r["seed"]: r["metrics"]["accuracy"] for r in select if r["method"] == "untrained"}
    for arm, decision in chosen["arms"].items():
        by_rate: dict[float, list[dict]] = {}
        for r in select:
            if r["method"] == arm:
                by_rate.setdefault(r["learning_rate"], []).append(r)
        assert sorted(by_rate) == pytest.approx(decision["grid"])
        usable = {}
        for rate, runs in by_rate.items():
            constant = any(max(r["prediction_counts"].values()) == sum(r["prediction_counts"].values()) for r in runs)
            below = any(r["metrics"]["accuracy"] <= untrained[r["seed"]] for r in runs)
            if not (constant or below):
                usable[rate] = fmean(r["metrics"]["accuracy"] for r in runs)
        expected = max(sorted(usable), key=lambda rate: usable[rate]) if usable else None  # ties: the lower rate
        assert decision["chosen"] == (pytest.approx(expected) if expected else None), arm
    assert chosen["arms"]["head_only"]["chosen"] is None  # the tiny random encoder's head alone never learns here

    test = [r for r in results_in(results / "compare_smoke_test") if r["status"] == "ok"]
    report = json.loads((tmp_path / "experiments" / "paper" / "compare" / "compare_smoke" / "report.json").read_text())
    for arm in ("lora", "astra"):
        runs = {r["seed"]: r for r in test if r["method"] == arm}
        assert sorted(runs) == [0, 1, 2] and {r["learning_rate"] for r in runs.values()} == {
            chosen["arms"][arm]["chosen"]
        }
        assert report["rows"][arm]["mean"] == pytest.approx(fmean(r["metrics"]["accuracy"] for r in runs.values()))
    astra_lora = next(c for c in report["contrasts"] if (c["a"], c["b"]) == ("astra", "lora"))
    by_seed = {m: {r["seed"]: r["metrics"]["accuracy"] for r in test if r["method"] == m} for m in ("astra", "lora")}
    assert astra_lora["two_level"]["difference"] == pytest.approx(
        fmean(by_seed["astra"].values()) - fmean(by_seed["lora"].values())
    )
    markdown = (tmp_path / "experiments" / "paper" / "compare" / "compare_smoke" / "report.md").read_text()
    assert "excluded: every rate collapsed" in markdown and "two-level bootstrap" in markdown
    assert (tmp_path / "experiments" / "paper" / "compare" / "compare_smoke" / "forest.png").stat().st_size > 0

    capsys.readouterr()
    assert main(["experiment=compare_smoke", *paths]) == 0
    assert "compare: 0 cells ran" in capsys.readouterr().out  # resumed: every cell read from its result
    report_dir = tmp_path / "experiments" / "paper" / "compare" / "compare_smoke"
    first_json = (report_dir / "report.json").read_text()
    (report_dir / "report.md").unlink()
    assert main(["experiment=compare_smoke", *paths, "--phase", "report"]) == 0  # reads results, runs nothing
    assert (report_dir / "report.md").read_text() == markdown  # the same results give the same report
    assert (report_dir / "report.json").read_text() == first_json  # seeds stay numbers after the JSON round trip

    capsys.readouterr()  # with the rates chosen, --dry-run lists the test cells (to run them elsewhere), runs nothing
    assert main(["experiment=compare_smoke", *paths, "--phase", "test", "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("python run.py ")]
    tested = {(r["method"], r["seed"]) for r in test}
    assert len(commands) == len(tested) == 3 * (1 + sum(d["chosen"] is not None for d in chosen["arms"].values()))
    for method, seed in tested:
        assert sum(f"method={method} " in c and c.endswith(f" seed={seed}") for c in commands) == 1, (method, seed)
    assert all("experiment_name=compare_smoke_test" in c for c in commands)


def test_a_dry_run_lists_the_select_grid_and_says_the_test_cells_wait_for_the_rates(tmp_path, capsys):
    assert main(["experiment=compare_smoke", f"paths.root_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    protocol = load_protocol("compare_smoke", [f"paths.root_dir={tmp_path}"])
    cells = len(protocol.select_seeds) * (protocol.untrained + sum(len(protocol.rates[arm]) for arm in protocol.arms))
    assert sum(line.startswith("python run.py ") for line in out.splitlines()) == cells
    assert "run --phase select first" in out and not (tmp_path / "experiments").exists()  # nothing ran
    protocol.chosen_rates_file.parent.mkdir(parents=True)
    protocol.chosen_rates_file.write_text('{"arms": {', encoding="utf-8")  # a file cut short
    assert main(["experiment=compare_smoke", f"paths.root_dir={tmp_path}", "--phase", "test", "--dry-run"]) == 1
    assert "chosen_rates.json is not readable JSON" in capsys.readouterr().err


def test_the_test_phase_tests_compare_arms_only_and_refuses_an_arm_without_a_chosen_rate(tmp_path, capsys):
    """compare.arms narrowed after selection: the arms it leaves out are not tested, and the console says so; an arm
    the chosen-rates file lacks is an error naming it, not a silently smaller comparison."""
    paths = [f"paths.root_dir={tmp_path}"]
    protocol = load_protocol("compare_smoke", paths)
    protocol.chosen_rates_file.parent.mkdir(parents=True)
    arms = {"lora": {"chosen": 1e-3}, "astra": {"chosen": 3e-4}, "head_only": {"chosen": None}}
    protocol.chosen_rates_file.write_text(json.dumps({"arms": arms}), encoding="utf-8")
    narrowed = ["compare.arms=[astra]", "compare.contrasts=[[astra,untrained]]"]
    assert main(["experiment=compare_smoke", *paths, *narrowed, "--phase", "test", "--dry-run"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("python run.py ")]
    assert {c.split(" method=")[1].split()[0] for c in commands} == {"astra", "untrained"}
    assert len(commands) == 2 * len(protocol.test_seeds)
    assert "left out: lora, head_only (in chosen_rates.json, not in compare.arms)" in out
    assert main(["experiment=compare_smoke", *paths, "compare.arms=[lora,pissa]", "compare.contrasts=[[pissa,lora]]",
                 "--phase", "test", "--dry-run"]) == 1  # fmt: skip
    assert "compare.arms has ['pissa'], which" in capsys.readouterr().err


def test_the_report_phase_runs_nothing_and_says_what_is_missing(tmp_path, capsys):
    assert main(["experiment=compare_smoke", f"paths.root_dir={tmp_path}", "--phase", "report"]) == 1
    assert "run the select phase first" in capsys.readouterr().err


def test_a_comparison_names_what_is_wrong_with_its_protocol(capsys):
    assert main(["experiment=nlu_glue_smoke"]) == 1
    assert "has no compare block" in capsys.readouterr().err
    assert main(["experiment=compare_smoke", "compare.arms=[lora,nosuch]"]) == 1
    assert "['nosuch'] not accepted" in capsys.readouterr().err
    assert main(["experiment=compare_smoke", "compare.select.statistic=median"]) == 1
    assert "compare.select.statistic='median' is not valid: expected one of mean, worst_seed" in capsys.readouterr().err


def test_the_report_flags_test_cells_from_more_than_one_code_version():
    from types import SimpleNamespace

    from astra.compare.report import code_versions, markdown

    runs = [{"git": {"commit": "a" * 40, "dirty": False}}, {"git": {"commit": "b" * 40, "dirty": True, "diff_sha256": "d1"}}]
    assert code_versions(runs) == ["a" * 40, "b" * 40 + "+dirty:d1"]
    report = {"experiment": "x", "metric": "accuracy", "rule": "the rule", "rows": {}, "excluded": {}, "contrasts": [],
              "bootstrap_samples": 10, "test_commits": code_versions(runs)}  # fmt: skip
    text = markdown(report, SimpleNamespace(chosen_rates_file=Path("chosen_rates.json")))
    assert "more than one code version" in text
    report["test_commits"] = code_versions(runs[:1])
    assert "more than one code version" not in markdown(report, SimpleNamespace(chosen_rates_file=Path("c.json")))
    assert "shared with" not in text
    report["cells_of"] = "y"  # a comparison reading another experiment_name's cells is named by its own config
    shared = markdown(report, SimpleNamespace(chosen_rates_file=Path("c.json")))
    assert shared.startswith("# Comparison `x`") and "Its cells are shared with `y`" in shared



def test_a_second_column_is_reported_from_the_cells_secondary_items():
    """compare.secondary_metrics: the same rows and contrasts from each cell's ``secondary_items`` (e.g. the
    log-likelihood scoring of a generation run), hand-checked; a column the cells did not score is a clear error."""
    from types import SimpleNamespace

    from astra.compare.protocol import ProtocolError
    from astra.compare.report import build, markdown

    def result(primary, second, path="r.json"):
        ids = [str(k) for k in range(len(primary))]
        return {"path": path, "metrics": {"accuracy": fmean(primary), "loglikelihood_accuracy": fmean(second)},
                "items": {"ids": ids, "correct": primary},
                "secondary_items": {"loglikelihood_accuracy": {"ids": ids, "correct": second}}}  # fmt: skip

    test = {"lora": {0: result([1, 0, 1, 0], [1, 1, 0, 0]), 1: result([1, 1, 1, 0], [1, 0, 0, 0])},
            "astra": {0: result([1, 1, 1, 0], [1, 1, 1, 0]), 1: result([0, 1, 1, 0], [1, 1, 0, 0])}}  # fmt: skip
    protocol = SimpleNamespace(experiment="x", name="x", metric="accuracy", contrasts=[("astra", "lora")], chosen_rates_file=Path("c.json"),
                               secondary_metrics=["loglikelihood_accuracy"])  # fmt: skip
    chosen = {"arms": {"lora": {"chosen": 1e-3}, "astra": {"chosen": 3e-4}}}
    report = build(protocol, test, chosen)
    second = report["secondary"]["loglikelihood_accuracy"]
    assert second["rows"]["lora"]["per_seed"] == {0: 0.5, 1: 0.25} and second["rows"]["astra"]["mean"] == 0.625
    assert second["contrasts"][0]["two_level"]["difference"] == pytest.approx(0.625 - 0.375)
    assert report["contrasts"][0]["two_level"]["difference"] == pytest.approx(0.625 - 0.625)  # the first column
    assert "## Second column: `loglikelihood_accuracy`" in markdown(report, protocol)
    del test["astra"][1]["secondary_items"]
    with pytest.raises(ProtocolError, match="no per-item outcomes for 'loglikelihood_accuracy'"):
        build(protocol, test, chosen)


def test_the_report_shows_what_the_rule_saw():
    """The selection table: every rate's mean validation score, a star where a seed collapsed, the chosen rate bold,
    an arm with no rate left said so."""
    from types import SimpleNamespace

    from astra.compare.report import build, markdown

    def rates(**cells):
        return {key: {"rate": float(key), "mean": mean, "collapsed": dict.fromkeys(bad, "why"), "scores": {}}
                for key, (mean, bad) in cells.items()}  # fmt: skip

    chosen = {"seeds": [0, 1], "untrained": {"0": 0.504, "1": 0.494},
              "arms": {"lora": {"chosen": 1e-3, "rates": rates(**{"0.0001": (0.513, []), "0.001": (0.791, []),
                                                                  "0.003": (0.476, ["0", "1"])})},
                       "head_only": {"chosen": None, "rates": rates(**{"0.001": (0.49, ["1"])})}}}  # fmt: skip
    protocol = SimpleNamespace(experiment="x", name="x", metric="accuracy", contrasts=[],
                               chosen_rates_file=Path("c.json"),
                               secondary_metrics=[])  # fmt: skip
    report = build(protocol, {}, chosen)
    assert report["experiment"] == "x" and "cells_of" not in report
    shared = build(SimpleNamespace(**{**vars(protocol), "experiment": "x_all"}), {}, chosen)  # reads x's cells
    assert (shared["experiment"], shared["cells_of"]) == ("x_all", "x")
    lines = markdown(report, protocol).splitlines()
    assert "| arm | 0.0001 | 0.001 | 0.003 | chosen |" in lines
    assert "| lora | 51.3 | **79.1** | 47.6* | 0.001 |" in lines
    assert "| head_only |  | 49.0* |  | none (every rate collapsed) |" in lines
    assert any("Untrained: seed 0 50.4, seed 1 49.4." in line for line in lines)
    assert any("by the rule written in the experiment before the runs (best mean validation score" in line
               for line in lines)  # fmt: skip
    # select.statistic: worst_seed: each cell shows the lowest seed first, and the rule says what it maximised
    chosen["statistic"] = "worst_seed"
    for arm in chosen["arms"].values():
        for cell_ in arm["rates"].values():
            cell_["scores"] = {"0": cell_["mean"] - 0.01, "1": cell_["mean"] + 0.01}
    lines = markdown(build(protocol, {}, chosen), protocol).splitlines()
    assert "| lora | 50.3 / 51.3 | **78.1 / 79.1** | 46.6 / 47.6* | 0.001 |" in lines
    assert any(line.startswith("Lowest score over seeds [0, 1] / mean of each rate") for line in lines)
    assert any("(best worst-seed validation score" in line for line in lines)


def test_many_seeds_are_shown_one_line_each_with_the_same_numbers():
    """Up to WIDE_SEEDS a row per arm (a column per seed); beyond it the table turns: a line per seed, a column per
    arm with its rate, mean and sd last; the numbers are the same either way."""
    from astra.compare.report import WIDE_SEEDS, _rows_table

    def rows(n):
        return {"untrained": {"rate": None, "per_seed": {s: 0.5 for s in range(n)}, "mean": 0.5, "sd": 0.0},
                "lora": {"rate": 1e-3, "per_seed": {s: 0.7 + s / 1000 for s in range(n)}, "mean": 0.75, "sd": 0.021}}

    narrow = _rows_table(rows(WIDE_SEEDS), {})
    assert narrow[0].startswith("| row | rate | seed 0 |") and len(narrow) == 4
    assert narrow[3].startswith("| lora | 0.001 | 70.0 | 70.1 |") and narrow[3].endswith("| 75.0 | 2.1 |")
    wide = _rows_table(rows(WIDE_SEEDS + 2), {"pissa": "every rate collapsed"})
    assert wide[0] == "| seed | untrained | lora (0.001) |"
    assert wide[2] == "| 0 | 50.0 | 70.0 |" and wide[2 + WIDE_SEEDS + 1] == "| 11 | 50.0 | 71.1 |"
    assert wide[-4:] == ["| **mean** | **50.0** | **75.0** |", "| **sd** | **0.0** | **2.1** |", "",
                         "pissa: excluded: every rate collapsed"]


COMPARISONS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("compare_*.yaml"))


@pytest.mark.parametrize("experiment", COMPARISONS)
def test_every_shipped_comparison_composes_into_a_valid_protocol(experiment, tmp_path):
    protocol = load_protocol(experiment, [])
    assert protocol.arms and all(protocol.rates[arm] for arm in protocol.arms)
    assert len(protocol.select_seeds) >= 1 and len(protocol.test_seeds) >= 1
    assert all(a in [*protocol.arms, "untrained"] and b in [*protocol.arms, "untrained"] for a, b in protocol.contrasts)
    # a cell of each phase passes the checks a run makes before loading anything (no setting silently ignored)
    from astra.compare.cells import Cell
    from astra.compare.protocol import compose
    from astra.run.validation import check_dependent_settings, validate_run_config
    from astra.tasks.base import get_family

    for phase in ("select", "test"):
        cell = Cell(phase, protocol.arms[0], protocol.rates[protocol.arms[0]][0], protocol.test_seeds[0])
        cfg = compose([*cell.overrides(protocol), f"paths.output_dir={tmp_path / phase}"])  # as run_cell sets it
        validate_run_config(cfg)
        check_dependent_settings(cfg, cell.overrides(protocol))
        get_family(cfg.task.family).check_ready(cfg.task)
    if experiment == "compare_qnli_worst_seed":  # the re-run differs from compare_qnli only where its config says
        base = load_protocol("compare_qnli", [])
        assert (protocol.select_statistic, base.select_statistic) == ("worst_seed", "mean")
        assert (len(protocol.select_seeds), len(base.select_seeds)) == (3, 2)
        assert (protocol.arms, protocol.contrasts, protocol.test_seeds) == (base.arms, base.contrasts, base.test_seeds)
        assert protocol.rates["astra_random"] == [1e-4, 3e-4, 1e-3]
        assert protocol.name == "compare_qnli_worst_seed"
