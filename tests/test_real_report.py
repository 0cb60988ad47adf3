"""The published real comparison (issue 11): its committed tables regenerate, byte for byte, from the committed result
files (``make paper-real``), so no number in experiments/paper/real/ can drift from the runs behind it."""

from __future__ import annotations

from pathlib import Path

import pytest

from astra.report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS, PUBLISHED = ROOT / "experiments" / "results" / "real", ROOT / "experiments" / "paper" / "real"


@pytest.mark.skipif(not (PUBLISHED / "tables").is_dir(), reason="no published real-comparison tables yet")
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
