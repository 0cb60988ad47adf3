"""Result-file integrity: honest git dirtiness, usual permissions, strict JSON, and in-place replacement on resume."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import numpy as np
import pytest
import torch

from astra.run import results
from astra.run.results import REQUIRED_KEYS


def _result(**changes):
    result = {key: None for key in REQUIRED_KEYS}
    result.update(method="lora", task="gsm8k", model="tiny_llama", seed=1, experiment="faults", status="ok")
    result.update(changes)
    return result


def _strict_loads(text: str):
    """json.loads that refuses the NaN / Infinity / -Infinity extensions Python writes by default."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


# ----------------------------------------------------------------------------------------- git state


def _git(repo, *args):
    command = ["git", "-c", "user.email=test@example.com", "-c", "user.name=Test", "-c", "commit.gpgsign=false", *args]
    subprocess.run(command, cwd=repo, check=True, capture_output=True)


def test_git_state_counts_tracked_changes_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repository above tmp_path
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("one\n")
    _git(repo, "add", "tracked.txt")
    _git(repo, "commit", "-q", "-m", "first")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    clean = {"commit": commit, "dirty": False, "diff_sha256": None, "checkout": str(repo.resolve())}
    assert results.git_state(repo) == clean
    (repo / "result-earlier-run.json").write_text("{}")  # an earlier run's (untracked) result file
    assert results.git_state(repo) == clean
    (repo / "tracked.txt").write_text("two\n")
    edited = results.git_state(repo)
    assert edited["dirty"] is True and len(edited["diff_sha256"]) == 16
    (repo / "tracked.txt").write_text("three\n")
    assert results.git_state(repo)["diff_sha256"] != edited["diff_sha256"]  # the hash tells two edits apart

    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    assert results.git_state(not_a_repo) == {"commit": None, "dirty": None, "diff_sha256": None, "checkout": None}


# ----------------------------------------------------------------------------------------- permissions


def test_result_files_get_the_usual_permissions(tmp_path, umask_022):
    paths = results.write_result(_result(), tmp_path / "run", tmp_path / "results")
    assert [_mode(path) for path in paths] == [0o644, 0o644]
    assert _mode(tmp_path / "run" / "result_copy.txt") == 0o644
    replaced = results.replace_result(_result(status="ok"), tmp_path / "run", paths[1])
    assert [_mode(path) for path in replaced] == [0o644, 0o644]


def test_result_files_follow_a_stricter_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        paths = results.write_result(_result(), tmp_path / "run", tmp_path / "results")
    finally:
        os.umask(previous)
    assert [_mode(path) for path in paths] == [0o600, 0o600]


# ----------------------------------------------------------------------------------------- strict JSON


def test_non_finite_values_are_written_as_null_and_named(tmp_path):
    result = _result(
        train_loss={"steps": 3, "per_step": [1.0, 0.5, float("nan")], "final": float("nan")},
        metrics={"accuracy": float("inf"), "exact": 0.25},
        telemetry={"final_train_loss": float("-inf"), "history": ({"norm": float("nan")}, 2.0)},
    )
    paths = results.write_result(result, tmp_path / "run", tmp_path / "results")
    for path in paths:
        written = _strict_loads(path.read_text())
        assert written["train_loss"]["per_step"] == [1.0, 0.5, None]
        assert written["metrics"] == {"accuracy": None, "exact": 0.25}
        assert written["telemetry"] == {"final_train_loss": None, "history": [{"norm": None}, 2.0]}
        assert sorted(written["non_finite"]) == [
            "metrics.accuracy", "telemetry.final_train_loss", "telemetry.history[0].norm",
            "train_loss.final", "train_loss.per_step[2]",
        ]  # fmt: skip
    assert result["metrics"]["accuracy"] == float("inf")  # the caller's dict is left alone


def test_finite_result_has_an_empty_non_finite_list(tmp_path):
    paths = results.write_result(_result(metrics={"accuracy": 0.5}), tmp_path / "run", tmp_path / "results")
    assert _strict_loads(paths[0].read_text())["non_finite"] == []


def test_sanitize_non_finite_handles_numpy_and_torch_scalars():
    clean, paths = results.sanitize_non_finite(
        {"a": np.float32("nan"), "b": torch.tensor(float("inf")), "c": np.float64(1.5), "d": torch.tensor(2.0),
         "e": [np.int64(3), True, "nan", None]}
    )  # fmt: skip
    assert clean == {"a": None, "b": None, "c": 1.5, "d": 2.0, "e": [3, True, "nan", None]}
    assert type(clean["c"]) is float and type(clean["d"]) is float and type(clean["e"][0]) is int
    assert paths == ["a", "b"]
    assert results.sanitize_non_finite([float("nan")]) == ([None], ["[0]"])


def test_paths_already_listed_by_the_caller_are_kept(tmp_path):
    result = _result(non_finite=["telemetry.sanitised_earlier"], metrics={"accuracy": float("nan")})
    paths = results.write_result(result, tmp_path / "run", tmp_path / "results")
    assert _strict_loads(paths[0].read_text())["non_finite"] == ["telemetry.sanitised_earlier", "metrics.accuracy"]


# ----------------------------------------------------------------------------------------- resume: replace in place


def test_write_result_remembers_where_the_copy_went(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert results.result_copy_path(run_dir) is None
    paths = results.write_result(_result(), run_dir, tmp_path / "results")
    assert (run_dir / "result_copy.txt").read_text().count("\n") == 1
    assert results.result_copy_path(run_dir) == paths[1].resolve()
    # a relative results directory is recorded absolutely: it still points there from another working directory
    relative = results.write_result(_result(), tmp_path / "run2", "relative-results")
    monkeypatch.chdir(tmp_path / "run")
    assert results.result_copy_path(tmp_path / "run2") == (tmp_path / relative[1]).resolve()


def test_replace_result_replaces_both_files_in_place(tmp_path):
    run_dir, results_root = tmp_path / "run", tmp_path / "results"
    first = results.write_result(_result(status="interrupted", metrics={}), run_dir, results_root)
    copy = results.result_copy_path(run_dir)
    replaced = results.replace_result(_result(status="ok", metrics={"accuracy": float("nan")}), run_dir, copy)

    assert replaced == [run_dir / "result.json", copy]
    assert first[0] == run_dir / "result.json" and first[1].resolve() == copy
    for path in replaced:
        written = _strict_loads(path.read_text())
        assert written["status"] == "ok" and written["metrics"] == {"accuracy": None}
        assert written["non_finite"] == ["metrics.accuracy"]
    # still exactly one file per run: nothing added beside them, no temp files left behind
    assert sorted(p.name for p in run_dir.iterdir()) == ["result.json", "result_copy.txt"]
    assert list(results_root.rglob("*")) == [copy.parent, copy]
    assert [r["status"] for r in results.load_results(results_root)] == ["ok"]


def test_replace_result_without_a_known_copy_replaces_the_run_file_only(tmp_path):
    run_dir = tmp_path / "run"
    results.write_result(_result(status="failed"), run_dir, tmp_path / "results")
    assert results.replace_result(_result(status="ok"), run_dir, None) == [run_dir / "result.json"]
    assert _strict_loads((run_dir / "result.json").read_text())["status"] == "ok"


def test_replace_result_refuses_missing_keys_and_leaves_the_files(tmp_path):
    run_dir = tmp_path / "run"
    paths = results.write_result(_result(status="interrupted"), run_dir, tmp_path / "results")
    before = [path.read_text() for path in paths]
    incomplete = {key: None for key in REQUIRED_KEYS if key != "metrics"}
    with pytest.raises(KeyError, match="metrics"):
        results.replace_result(incomplete, run_dir, results.result_copy_path(run_dir))
    assert [path.read_text() for path in paths] == before
