"""The published comparisons regenerate, byte for byte, from the committed result files (``make paper-real``), so no
published number can drift from the runs behind it: each comparison of the Makefile's ``PUBLISHED_COMPARISONS``
(its report under experiments/paper/compare/, from a clean clone's configs) and the superseded first comparison's
tables (issue 11, experiments/paper/superseded/first_comparison/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from astra.report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "real" / "superseded" / "first_comparison"
PUBLISHED = ROOT / "experiments" / "paper" / "superseded" / "first_comparison"


def _published_comparisons() -> list[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return re.search(r"^PUBLISHED_COMPARISONS \?= (.+)$", makefile, re.MULTILINE).group(1).split()


@pytest.mark.parametrize("name", _published_comparisons())
def test_published_comparison_reports_regenerate_from_the_committed_results(name, tmp_path):
    from astra.compare.__main__ import main

    published = ROOT / "experiments" / "paper" / "compare" / name
    assert (published / "report.md").is_file(), f"{name} is in PUBLISHED_COMPARISONS but has no report: run make paper-real"
    status = main([f"experiment={name}", "--phase", "report", f"compare.report_dir={tmp_path / 'report'}",
                   f"paths.results_dir={ROOT / 'experiments' / 'results'}", f"paths.log_dir={tmp_path / 'logs'}"])  # fmt: skip
    assert status == 0
    regenerated_json = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert regenerated_json["experiment"] == name  # named by its config, also where it reads another's cells
    for file in ("report.md", "report.json"):
        regenerated = (tmp_path / "report" / file).read_text(encoding="utf-8")
        assert regenerated == (published / file).read_text(encoding="utf-8"), f"{name}/{file}: run `make paper-real`"


def test_published_tables_regenerate_from_the_committed_results(tmp_path):
    write_report(RESULTS, tmp_path, figures=False)
    regenerated = {p.relative_to(tmp_path): p.read_text(encoding="utf-8") for p in (tmp_path / "tables").iterdir()}
    published = {p.relative_to(PUBLISHED): p.read_text(encoding="utf-8") for p in (PUBLISHED / "tables").iterdir()}
    assert sorted(map(str, regenerated)) == sorted(map(str, published)), "run `make paper-real` and commit its output"
    for name, text in published.items():
        assert regenerated[name] == text, f"{name} differs from what the result files give: run `make paper-real`"
    failed = tmp_path / "failed.md"
    assert failed.is_file() == (PUBLISHED / "failed.md").is_file()
    if failed.is_file():
        assert failed.read_text(encoding="utf-8") == (PUBLISHED / "failed.md").read_text(encoding="utf-8")
