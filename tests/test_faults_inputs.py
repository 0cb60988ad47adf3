"""Nothing the user asked for is silently ignored; no trained row without training; inputs and checkpoints that are
wrong are named before the model loads; one clean message per input error; provenance names every checkout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, ROOT, compose_config

from astra.run import hydra_support, record, results, runner
from astra.run.resume import resume_checkpoint
from astra.run.validation import DEPENDENT_SETTINGS, ConfigError, check_dependent_settings, planned_optimizer_steps

QUICK = ["logger=none", "trainer=debug", "trainer.eval_limit=2", "task.eval.max_new_tokens=4"]


def no_model(monkeypatch, why: str) -> None:
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail(f"the model was loaded: {why}"))


def write_gsm8k_rows(folder: Path, n: int = 8) -> tuple[Path, Path]:
    rows = [json.dumps({"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}) for i in range(n)]
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "train.jsonl", folder / "test.jsonl"


# ------------------------------------------------------------------------------------ nothing silently ignored


@pytest.mark.parametrize("task,split", [("gsm8k", "test"), ("qnli", "dev")])
def test_data_files_without_source_files_are_refused(tmp_path, monkeypatch, task, split):
    """Today's main trained and scored the shipped sample and finished ok, the result naming the user's files."""
    train_file, test_file = write_gsm8k_rows(tmp_path)
    no_model(monkeypatch, "task.data without task.source=files")
    model = ["model=tiny_bert"] if task == "qnli" else []
    quick = [o for o in QUICK if not o.startswith("task.eval.max_new_tokens")] if task == "qnli" else QUICK
    overrides = [*quick, *model, f"task={task}", f"task.data.train={train_file}", f"task.data.{split}={test_file}"]
    with pytest.raises(ConfigError, match=r"task\.data\.train is given but takes effect only with task\.source=files"):
        runner.train(compose_config(tmp_path, overrides), overrides=overrides)


def test_data_files_with_source_files_are_used_and_recorded(tmp_path):
    train_file, test_file = write_gsm8k_rows(tmp_path, n=6)
    overrides = [*QUICK, "task.source=files", f"task.data.train={train_file}", f"task.data.test={test_file}"]
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["data"]["train_rows"] == 6
    assert result["config"]["task"]["source"] == "files" and result["config"]["task"]["data"]["train"] == str(train_file)


def violating_overrides(rule) -> tuple[list[str], list[str]]:
    """(overrides that give ``rule``'s setting without its condition, the overrides that satisfy the condition)."""
    cases = {
        "task.data.": (["task.data.train=/tmp/x.jsonl"], ["task.source=files"]),
        "task.hub.": (["task.hub.train.split=train"], ["task.source=hub"]),
        "forgetting.file": (["forgetting.file=/tmp/x.txt"], ["forgetting.source=file"]),
        "forgetting.hub.": (["forgetting.hub.split=validation"], ["forgetting.source=hub"]),
        "forgetting.": (["forgetting.enabled=false", "forgetting.max_windows=4"], ["forgetting.enabled=true"]),
        "trainer.val_size": (["task=qnli", "model=tiny_bert", "trainer.val_size=4"], ["task.validation_size=null"]),
        "task.eval.max_new_tokens": (["task=arc_e", "task.eval.max_new_tokens=8"], ["task.eval.protocol=generation"]),
        "task.train_benchmarks": (["task=arc_e", "task.train_benchmarks=[arc_e]"], ["task.train_format=lm_eval_query"]),
        "task.eval.also_loglikelihood": (["task=arc_e", "task.eval.also_loglikelihood=true"],
                                         ["task.eval.protocol=generation"]),  # fmt: skip
    }
    if rule.prefix.startswith("method.init."):
        key = rule.prefix.removeprefix("method.init.")
        value = {"tolerance": "0.01", "on_unconverged": "warn"}.get(key, "4")
        return ["method=astra", "method.init.eigensolver=exact", f"{rule.prefix}={value}"], ["method.init.eigensolver=auto"]
    return cases[rule.prefix]


@pytest.mark.parametrize("rule", DEPENDENT_SETTINGS, ids=lambda rule: rule.prefix)
def test_every_dependent_setting_is_refused_without_its_condition(tmp_path, rule):
    given, condition = violating_overrides(rule)
    with pytest.raises(ConfigError, match=re.escape(rule.needs)):
        check_dependent_settings(compose_config(tmp_path, given), given)
    satisfied = [*given, *condition]
    if rule.prefix == "forgetting.":
        satisfied = [o for o in satisfied if o != "forgetting.enabled=false"]
    check_dependent_settings(compose_config(tmp_path, satisfied), satisfied)  # no error


def _comment(line: str) -> str:
    return line.split("#", 1)[1].strip() if "#" in line else ""


def test_configs_walked_for_settings_that_depend_on_another():
    """Every task YAML's data / hub keys, the forgetting keys and every method option documented as "randomized:" is
    covered by a rule: a new key of that kind cannot be silently ignored."""
    covered = lambda key: any(rule.covers(key) for rule in DEPENDENT_SETTINGS)  # noqa: E731
    missing = []
    for path in sorted((CONF_DIR / "task").glob("*.yaml")):
        section = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^\w", line):
                section = line.split(":")[0]
            elif section in ("data", "hub") and re.match(r"^  \w+:", line):
                key = f"task.{section}.{line.split(':')[0].strip()}"
                missing += [] if covered(key) else [f"{path.name}: {key}"]
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^  \w+:", line) and _comment(line).startswith("randomized:"):
                key = f"method.init.{line.split(':')[0].strip()}"
                missing += [] if covered(key) else [f"{path.name}: {key}"]
    for key in ("file", "hub", "max_length", "max_windows", "batch_size", "source"):
        missing += [] if covered(f"forgetting.{key}") else [f"config.yaml: forgetting.{key}"]
    assert not missing, f"settings that only take effect under another, with no rule: {missing}"


# ------------------------------------------------------------------------------------ no trained row without training


@pytest.mark.parametrize("setting", ["trainer.lightning.max_epochs=0", "trainer.lightning.max_steps=0"])
def test_zero_optimizer_steps_is_refused_before_the_model_loads(tmp_path, monkeypatch, setting):
    no_model(monkeypatch, "a run that would train 0 steps")
    overrides = [*QUICK, "method=lora", setting]
    with pytest.raises(ConfigError, match="0 optimizer steps"):
        runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def test_untrained_method_may_take_zero_steps(tmp_path):
    overrides = [*QUICK, "method=untrained", "trainer.lightning.max_epochs=0"]
    runner.train(compose_config(tmp_path, overrides), overrides=overrides)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "ok"


def test_planned_steps_follow_lightning(tmp_path):
    cfg = compose_config(tmp_path, ["trainer.batch_size=4", "trainer.lightning.max_epochs=3"])
    assert planned_optimizer_steps(cfg, 10) == 3 * 3  # ceil(10 / 4) batches an epoch
    cfg = compose_config(tmp_path, ["trainer.batch_size=4", "trainer.lightning.accumulate_grad_batches=2"])
    assert planned_optimizer_steps(cfg, 10) == 2 * 2  # 3 batches -> 2 steps (the last one partial), 2 epochs
    cfg = compose_config(tmp_path, ["trainer.lightning.max_steps=5", "trainer.lightning.max_epochs=-1"])
    assert planned_optimizer_steps(cfg, 10) == 5


# ------------------------------------------------------------------------------------ files, checkpoints, messages


def test_a_directory_given_as_a_data_file_says_so(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    write_gsm8k_rows(folder)
    no_model(monkeypatch, "a directory as the training file")
    overrides = [*QUICK, "task.source=files", f"task.data.train={folder}", f"task.data.test={folder / 'test.jsonl'}"]
    with pytest.raises(IsADirectoryError, match=r"task\.data\.train .*data is a directory, not a file.*train\.jsonl"):
        runner.train(compose_config(tmp_path, overrides), overrides=overrides)


def resumable_run(tmp_path: Path, status: str, steps: int, checkpoint: bytes | None) -> tuple:
    run_dir = tmp_path / "run"
    overrides = [*QUICK, f"resume={run_dir}", "trainer.checkpoint_every_n_steps=4"]
    cfg = compose_config(tmp_path, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    (run_dir / "result.json").write_text(json.dumps({"status": status, "steps_done": steps, "config": config}))
    if checkpoint is not None:
        (run_dir / "checkpoint").mkdir()
        (run_dir / "checkpoint" / "last.ckpt").write_bytes(checkpoint)
    return cfg, run_dir


def test_a_truncated_checkpoint_is_named_before_the_model_loads(tmp_path):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, buffer)
    cfg, run_dir = resumable_run(tmp_path, "interrupted", 8, buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"checkpoint .*last\.ckpt is unreadable.*start the run again"):
        resume_checkpoint(cfg, run_dir)


def test_resume_says_what_is_really_missing(tmp_path):
    cfg, run_dir = resumable_run(tmp_path / "early", "interrupted", 2, None)
    with pytest.raises(FileNotFoundError, match="stopped at step 2, before its first checkpoint"):
        resume_checkpoint(cfg, run_dir)
    cfg, run_dir = resumable_run(tmp_path / "done", "ok", 20, None)
    with pytest.raises(ValueError, match="already finished with status ok"):
        resume_checkpoint(cfg, run_dir)


def run_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASTRA_ROOT": str(tmp_path)}
    env.pop("ASTRA_VERBOSE", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_an_input_error_prints_one_clean_message(tmp_path):
    done = run_command(tmp_path, "rank=0", "logger=none")
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "Traceback" not in output and output.count("rank=0 is not valid") == 1, output


def test_a_multirun_with_a_composition_error_never_says_every_job_ok(tmp_path):
    done = run_command(tmp_path, "-m", "method=nosuch,lora", "logger=none")
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Could not find 'method/nosuch'" in output
    assert "every job ok" not in output


def test_provenance_names_the_configs_checkout_and_changes_during_the_run(tmp_path, monkeypatch):
    """A clone sharing this checkout's editable install: the code's git state and the configs' are both recorded."""
    clone = tmp_path / "clone"
    (clone / "conf").mkdir(parents=True)
    for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=clone, check=True)
    (clone / "conf" / "config.yaml").write_text("seed: 1\n")
    subprocess.run(["git", "add", "."], cwd=clone, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "c"], cwd=clone, check=True)
    (clone / "conf" / "config.yaml").write_text("seed: 2\n")  # edited in the clone: dirty there
    monkeypatch.setattr(hydra_support, "config_root", lambda: clone / "conf")
    monkeypatch.setattr(results, "_PROCESS_START", {})  # this test's own start, not an earlier test's
    run = record.RunRecord(compose_config(tmp_path, QUICK), tmp_path / "run", [])
    facts = run.provenance()
    assert facts["git"]["checkout"] == str(Path(results.PROJECT_ROOT).resolve())
    assert facts["git_configs"]["checkout"] == str(clone.resolve()) and facts["git_configs"]["dirty"] is True
    assert "git_at_write" not in facts
    monkeypatch.setattr(results, "git_state", lambda root=None: {**run.git_at_start, "commit": "0" * 40})
    assert run.provenance()["git_at_write"]["commit"] == "0" * 40  # a commit landed while the run ran


def test_every_cell_of_a_process_records_the_git_state_of_the_process_start(tmp_path, monkeypatch):
    """A grid's later cell, begun after a commit landed, still records the code the process imported at its start
    (``git``), and the later state beside it (``git_at_write``)."""
    at_start = {"commit": "a" * 40, "dirty": True, "diff_sha256": "d" * 16, "checkout": "/x"}
    landed = {**at_start, "commit": "b" * 40, "dirty": False, "diff_sha256": None}
    monkeypatch.setattr(results, "_PROCESS_START", {})
    monkeypatch.setattr(results, "git_state", lambda root=None: at_start)
    assert results.git_state_at_process_start() == at_start  # what run.py asks before composing
    monkeypatch.setattr(results, "git_state", lambda root=None: landed)  # a commit lands mid-grid
    monkeypatch.setattr(hydra_support, "config_root", lambda: None)
    later_cell = record.RunRecord(compose_config(tmp_path, QUICK), tmp_path / "run", [])
    facts = later_cell.provenance()
    assert facts["git"] == at_start and facts["git_at_write"] == landed
