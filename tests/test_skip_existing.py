"""A grid cell's identity (skip-existing, the report's duplicate detection) does not depend on where the project
folder is: a clone elsewhere recognises committed results, including those written before results recorded it."""

from __future__ import annotations

import json
from pathlib import Path

from astra.report.results import newest_per_cell
from astra.run import skip_existing
from astra.run.skip_existing import (
    PROJECT_ROOT,
    config_fingerprint,
    find_ok_result,
    recorded_project_root,
    result_fingerprint,
)

SPLIT = "experiments/real/qnli_split.json"  # a file the project ships


def _config(root: str, lr: float = 1e-3) -> dict:
    return {"seed": 0, "optim": {"lr": lr}, "task": {"row_ids": {"file": f"{root}/{SPLIT}", "train": "train"}},
            "paths": {"output_dir": f"{root}/logs/x"}}  # fmt: skip


def _result(root: str, lr: float = 1e-3, created: str = "20261201T000000", recorded: bool = True) -> dict:
    config = _config(root, lr)
    result = {"status": "ok", "created": created, "config": config, "metrics": {"accuracy": lr},
              "config_fingerprint": config_fingerprint(config, root if recorded else None)}  # fmt: skip
    if recorded:
        result["project_root"] = root
    return result


def test_the_project_folder_is_hashed_as_its_placeholder():
    here = config_fingerprint(_config(PROJECT_ROOT))
    assert config_fingerprint(_config("/elsewhere/clone"), "/elsewhere/clone") == here
    assert config_fingerprint(_config(PROJECT_ROOT, lr=3e-4)) != here  # what the cell computes still counts
    assert config_fingerprint(_config(PROJECT_ROOT), None) != here  # the placeholder, not the path, is hashed


def test_the_root_of_a_result_is_recorded_or_read_off_a_shipped_file():
    assert recorded_project_root(_result("/a/b")) == "/a/b"
    assert recorded_project_root(_result("/old/place", recorded=False)) == "/old/place"  # via experiments/real/...
    unrelated = {"config": {"task": {"data": {"train": "/data/experiments/nothing_shipped.json"}}, "seed": 0}}
    assert recorded_project_root(unrelated) is None
    assert (Path(PROJECT_ROOT) / SPLIT).is_file()


def test_skip_existing_finds_a_result_written_in_another_checkout(tmp_path):
    (tmp_path / "new.json").write_text(json.dumps(_result("/clone/one")))
    (tmp_path / "legacy.json").write_text(json.dumps(_result("/old/place", 3e-4, recorded=False)))
    for lr, name in ((1e-3, "new.json"), (3e-4, "legacy.json")):
        found = find_ok_result(tmp_path, config_fingerprint(_config(PROJECT_ROOT, lr)))
        assert found is not None and found["path"].endswith(name)
    assert find_ok_result(tmp_path, config_fingerprint(_config(PROJECT_ROOT, 1e-4))) is None


def test_the_report_keeps_one_result_per_cell_across_checkouts():
    older = {**_result("/old/place", recorded=False, created="20261201T000000"), "_path": "/r/older.json"}
    newer = {**_result("/clone/one", created="20261202T000000"), "_path": "/r/newer.json"}
    other = {**_result("/clone/one", lr=3e-4), "_path": "/r/other.json"}
    assert result_fingerprint(older) == result_fingerprint(newer) != result_fingerprint(other)
    kept, notes = newest_per_cell([older, newer, other])
    assert sorted(r["_path"] for r in kept) == ["/r/newer.json", "/r/other.json"]
    assert notes == ["older.json duplicates newer.json (same config); the newer is used"]


# Committed results: their identity must survive module moves (``HISTORICAL_TARGETS``).
PUBLISHED_RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "real"


def published_results() -> list[dict]:
    found = []
    for path in sorted(PUBLISHED_RESULTS.rglob("*.json")):  # the superseded ones too: they stay readable
        found.append({**json.loads(path.read_text(encoding="utf-8")), "path": str(path)})
    return found


def test_committed_results_keep_their_fingerprints():
    """Every committed result (superseded ones too) hashes as it did before the package's modules moved: the golden
    file was computed by the code of commit 7edb53e, before the move."""
    golden = json.loads((Path(__file__).parent / "fixtures" / "published_fingerprints.json").read_text(encoding="utf-8"))
    assert len(golden) > 150
    changed = []
    for relative, fingerprint in golden.items():
        result = json.loads((PUBLISHED_RESULTS / relative).read_text(encoding="utf-8"))
        if skip_existing.result_fingerprint(result) != fingerprint:
            changed.append(relative)
    assert not changed, f"{len(changed)} committed results changed identity: {changed[:3]}"


def test_moved_targets_hash_in_their_first_spelling():
    old = {"callbacks": {"lr": {"_target_": "astra.callbacks.LRMonitor"}}, "seed": 0}
    new = {"callbacks": {"lr": {"_target_": "astra.telemetry.loss.LRMonitor"}}, "seed": 0}
    assert skip_existing.config_fingerprint(old) == skip_existing.config_fingerprint(new)
    other = {"callbacks": {"lr": {"_target_": "astra.telemetry.loss.LossMonitor"}}, "seed": 0}
    assert skip_existing.config_fingerprint(other) != skip_existing.config_fingerprint(new)


def test_a_committed_cell_composed_today_is_recognised(tmp_path):
    """Skip-existing finds a committed result from the command that made it, composed with today's code and configs."""
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - the ${astra_...} resolvers

    result = next(r for r in published_results() if r["experiment"] == "real_qnli_test" and r["method"] == "lora")
    conf = Path(__file__).resolve().parents[1] / "conf"
    paths = [f"paths.output_dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path}", f"paths.results_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*result["overrides"], *paths])
    found = skip_existing.find_ok_result(Path(result["path"]).parent, skip_existing.fingerprint_of(cfg))
    assert found is not None, "today's config for a committed cell no longer matches its result"
    assert found["seed"] == result["seed"] and found["method"] == "lora"


def test_a_comparisons_protocol_is_not_part_of_the_cell():
    """The ``compare`` block (grids, contrasts, the report folder, resolved under whichever checkout ran it) says which
    cells a comparison has, not what one computes: a report composed in a clean clone finds the cells run elsewhere."""
    base = _config(PROJECT_ROOT)
    ran = {**base, "compare": {"report_dir": "/work/main/experiments/paper/compare/c", "rates": {"default": [1e-4]}}}
    today = {**base, "compare": {"report_dir": "./experiments/paper/compare/c", "rates": {"default": [1e-4, 3e-4]}}}
    assert config_fingerprint(ran) == config_fingerprint(today) == config_fingerprint(base)
    assert config_fingerprint({**today, "seed": 1}) != config_fingerprint(today)


def test_a_setting_added_later_is_not_hashed_at_its_default():
    """``task.eval.also_loglikelihood: false`` (added after the commonsense cells were recorded) keeps their identity;
    turning it on makes another cell."""
    recorded = {**_config(PROJECT_ROOT), "task": {"eval": {"protocol": "generation"}}}
    today = {**recorded, "task": {"eval": {"protocol": "generation", "also_loglikelihood": False}}}
    second_column = {**recorded, "task": {"eval": {"protocol": "generation", "also_loglikelihood": True}}}
    assert config_fingerprint(today) == config_fingerprint(recorded) != config_fingerprint(second_column)
    assert today["task"]["eval"]["also_loglikelihood"] is False  # the input is not changed
