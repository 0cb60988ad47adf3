"""The fault suite: runs that go wrong must say so, in their result file and their exit code.

Divergence, interruption by signals in every phase, configuration validation, unique run directories,
the multirun's failure report, and checkpoint/resume. (Data errors: test_faults_data.py; the calibration
cache key: test_faults_cache.py; result-file integrity: test_faults_results.py.)
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config

from astra.run import runner
from astra.run.interrupts import RunInterrupted
from astra.run.validation import ConfigError
from astra.training.module import CausalLMModule, TrainingDivergedError

QUICK = ["logger=none", "trainer=debug", "trainer.eval_limit=2", "task.eval.max_new_tokens=4"]
TESTS_DIR = Path(__file__).parent


def run_result(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "result.json").read_text())


def train(tmp_path: Path, overrides: list[str]):
    return runner.train(compose_config(tmp_path, overrides), overrides=overrides)


def subprocess_env(root: Path) -> dict:
    return {**os.environ, "ASTRA_ROOT": str(root), "PYTHONPATH": str(TESTS_DIR)}


# ----------------------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("callbacks,every", [("none", "auto"), ("default", "auto"), ("default", "10")])
def test_diverged_training_fails_at_the_exact_step(tmp_path, callbacks, every):
    """lr=1e30 gives a NaN loss at step 2; the run fails naming it, telemetry (an SVD of NaN factors) never masks it,
    also when the losses are only read every 10 steps (the GPU default)."""
    overrides = [*QUICK, "method=lora", "optim.lr=1e30", f"callbacks={callbacks}", f"trainer.check_finite_every_n_steps={every}"]
    with pytest.raises(TrainingDivergedError, match=r"training diverged at step 2: loss=nan"):
        train(tmp_path, overrides)
    result = run_result(tmp_path)
    assert result["status"] == "failed"
    assert result["error"].startswith("astra.training.module.TrainingDivergedError: training diverged at step 2: loss=nan")
    per_step = result["train_loss"]["per_step"]
    assert math.isfinite(per_step[0]) and per_step[1] is None  # strict JSON: NaN written as null
    assert "train_loss.per_step[1]" in result["non_finite"]
    if every == "auto":  # checked every step on CPU: the run stops at the diverged step, before its update
        assert len(per_step) == 2 and result["steps_done"] == 1


class _ScriptedLoss(torch.nn.Module):
    """A 'model' whose loss follows a script, to test when and how the module checks losses."""

    def __init__(self, losses):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.losses, self.calls = list(losses), 0

    def forward(self, **batch):
        loss = self.weight * 0 + self.losses[self.calls]
        self.calls += 1
        return type("Out", (), {"loss": loss})()


def test_losses_are_checked_every_k_steps_and_the_step_is_exact():
    module = CausalLMModule(_ScriptedLoss([1.0, 2.0, float("inf"), 3.0, 4.0, 5.0]), optim=None, check_finite_every_n_steps=4)
    module.log = lambda *args, **kwargs: None
    batch = {"input_ids": torch.zeros(1, 2, dtype=torch.long)}
    for index in range(3):  # the inf at step 3 is not read yet: no host sync before the 4th loss
        module.training_step(batch, index)
    with pytest.raises(TrainingDivergedError, match=r"at step 3: loss=inf"):
        module.training_step(batch, 3)


# ----------------------------------------------------------------------------------------- signals


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.1)


@pytest.mark.parametrize("signal_name,exit_code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_during_training_records_interrupted_and_exits_nonzero(tmp_path, signal_name, exit_code):
    """A real signal from outside, as a scheduler or Ctrl-C sends it, while the process is training."""
    command = [sys.executable, "run.py", "logger=none", "callbacks=none", "method=lora", "trainer.lightning.max_steps=100000",
               "trainer.lightning.max_epochs=1000", "trainer.checkpoint_every_n_steps=1"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        runs = tmp_path / "logs" / "runs"
        _wait_for(runs)
        _wait_for(next(runs.iterdir()) / "checkpoint" / "last.ckpt")  # training is under way
        time.sleep(0.5)
        process.send_signal(getattr(signal, signal_name))
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == exit_code, stderr.decode()[-2000:]
    result = json.loads(next(runs.iterdir()).joinpath("result.json").read_text())
    assert result["status"] == "interrupted"
    assert result["interruption"] == {"signal": signal_name, "phase": "train"}
    assert result["error"].endswith(f"interrupted by {signal_name}")
    assert result["steps_done"] >= 1 and result["train_loss"]["steps"] >= result["steps_done"]
    assert all(math.isfinite(value) for value in result["train_loss"]["per_step"])


def test_signal_during_init_writes_a_result(tmp_path):
    overrides = [*QUICK, "method=astra", "method.init._target_=fault_injection.signal_during_init"]
    with pytest.raises(RunInterrupted):
        train(tmp_path, overrides)
    result = run_result(tmp_path)
    assert result["status"] == "interrupted" and result["interruption"] == {"signal": "SIGTERM", "phase": "init"}
    assert result["train_loss"]["steps"] == 0


def test_signal_during_evaluation_writes_a_result_with_the_losses(tmp_path, monkeypatch):
    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(runner.steps, "evaluate", interrupted_evaluation)
    with pytest.raises(RunInterrupted):
        train(tmp_path, [*QUICK, "method=lora", "callbacks=none"])
    result = run_result(tmp_path)
    assert result["interruption"] == {"signal": "SIGINT", "phase": "eval"}
    assert result["steps_done"] == 5 and result["train_loss"]["steps"] == 5
    assert signal.getsignal(signal.SIGINT) is not None  # handlers restored after the run


# ----------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "override,key",
    [("rank=abc", "rank='abc'"), ("rank=0", "rank=0"), ("rank=2.5", "rank=2.5"), ("alpha=0", "alpha=0"),
     ("optim.lr=inf", "optim.lr=inf"), ("optim.lr=-1e-3", "optim.lr=-0.001"), ("trainer.batch_size=0", "trainer.batch_size=0"),
     ("task.eval.batch_size=0", "task.eval.batch_size=0"), ("method=astra method.calibration.n_samples=0", "method.calibration.n_samples=0"),
     ("trainer.eval_limit=0", "trainer.eval_limit=0"), ("optim.warmup_ratio=2", "optim.warmup_ratio=2")],
)  # fmt: skip
def test_bad_settings_fail_before_the_model_loads(tmp_path, monkeypatch, override, key):
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the model was loaded before validation"))
    with pytest.raises(ConfigError) as info:
        train(tmp_path, [*QUICK, *override.split()])
    assert str(info.value).startswith(key) and "expected" in str(info.value)
    assert run_result(tmp_path)["status"] == "failed"


def test_unwritable_results_directory_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the model was loaded before validation"))
    cfg = compose_config(tmp_path, [*QUICK])
    cfg.paths.results_dir = str(blocker / "results")
    with pytest.raises(ConfigError, match="paths.results_dir=.*is not a writable directory"):
        runner.train(cfg, overrides=[])


def test_empty_test_split_fails_before_the_model_loads(tmp_path, monkeypatch):
    rows = [json.dumps({"question": f"What is {i}+1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}) for i in range(8)]
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.jsonl").write_text("")
    monkeypatch.setattr(runner, "build_model", lambda *a, **k: pytest.fail("the model was loaded before the data was checked"))
    overrides = [*QUICK, "task.source=files", f"task.data.train={tmp_path / 'train.jsonl'}", f"task.data.test={tmp_path / 'test.jsonl'}"]
    with pytest.raises(ValueError, match="test.jsonl"):
        train(tmp_path, overrides)


# ----------------------------------------------------------------------------------------- run directories


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - registers ${astra_uid:}

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dirs = {compose(config_name="config", overrides=["method=lora"], return_hydra_config=True).hydra.run.dir for _ in range(5)}
    assert len(dirs) == 5, dirs


def test_multirun_lists_every_failed_job(tmp_path):
    command = [sys.executable, "run.py", "-m", "rank=4,1000,2000", *QUICK, "callbacks=none"]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "2 of 3 jobs did not finish ok" in done.stderr
    assert "rank=1000" in done.stderr and "rank=2000" in done.stderr
    results = [json.loads(p.read_text()) for p in (tmp_path / "logs" / "multiruns").rglob("result.json")]
    assert sorted(r["status"] for r in results) == ["failed", "failed", "ok"]


# ----------------------------------------------------------------------------------------- checkpoint and resume

RESUMABLE = [*QUICK, "callbacks=none", "trainer.lightning.max_steps=6", "trainer.checkpoint_every_n_steps=2"]
INTERRUPT_AT_5 = ["+callbacks.fault._target_=fault_injection.SignalAtStep", "+callbacks.fault.step=5"]


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_holds_only_what_resuming_needs(tmp_path):
    with pytest.raises(RunInterrupted):
        train(tmp_path, [*RESUMABLE, "method=lora", *INTERRUPT_AT_5])
    checkpoint = torch.load(tmp_path / "run" / "checkpoint" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["state_dict"] and all("lora_" in name for name in checkpoint["state_dict"])  # no frozen weight
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    assert checkpoint["TaskDataModule"] == {"epoch": 0, "batches_done": 4}
    assert {"python", "numpy", "torch"} <= set(checkpoint["astra"]["rng"])
    assert len(checkpoint["astra"]["loss_history"]) == 4


@pytest.mark.parametrize("method", ["lora", "astra"])
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path, method):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(straight, [*RESUMABLE, f"method={method}"])
    overrides = [*RESUMABLE, f"method={method}", *INTERRUPT_AT_5]
    with pytest.raises(RunInterrupted):
        train(broken, overrides)
    assert run_result(broken)["status"] == "interrupted" and run_result(broken)["steps_done"] == 5
    train(broken, [*overrides, f"resume={broken / 'run'}"])
    assert_same_adapter(adapter_weights(straight / "run"), adapter_weights(broken / "run"))
    result, reference = run_result(broken), run_result(straight)
    assert result["status"] == "ok" and result["resumed_from_step"] == 4
    assert [attempt["status"] for attempt in result["attempts"]] == ["interrupted"]
    assert result["train_loss"]["per_step"] == pytest.approx(reference["train_loss"]["per_step"], rel=1e-5)
    copies = list((broken / "results").rglob("*.json"))
    assert len(copies) == 1 and json.loads(copies[0].read_text())["status"] == "ok"  # the copy was updated, not added


def test_resume_at_an_epoch_boundary(tmp_path):
    """16 rows, batches of 8: the step-4 checkpoint falls on the end of epoch 2 of 3."""
    rows = [json.dumps({"question": f"What is {i} plus {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}) for i in range(16)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    files = ["task.source=files", f"task.data.train={data}", f"task.data.test={data}"]
    overrides = [*RESUMABLE, *files, "method=lora", "trainer.lightning.max_steps=-1", "trainer.lightning.max_epochs=3"]
    train(tmp_path / "straight", overrides)
    with pytest.raises(RunInterrupted):
        train(tmp_path / "broken", [*overrides, *INTERRUPT_AT_5])
    checkpoint = torch.load(tmp_path / "broken" / "run" / "checkpoint" / "last.ckpt", weights_only=True)
    assert checkpoint["TaskDataModule"] == {"epoch": 2, "batches_done": 0}
    train(tmp_path / "broken", [*overrides, *INTERRUPT_AT_5, f"resume={tmp_path / 'broken' / 'run'}"])
    assert_same_adapter(adapter_weights(tmp_path / "straight" / "run"), adapter_weights(tmp_path / "broken" / "run"))
    assert run_result(tmp_path / "broken")["train_loss"]["steps"] == 6


def test_resume_from_the_command_line(tmp_path):
    """`python run.py resume=<run_dir>` recomposes the run's own config and finishes it in place."""
    env = subprocess_env(tmp_path)
    command = [sys.executable, "run.py", *RESUMABLE, "method=lora", *INTERRUPT_AT_5]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 143, first.stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    refused = subprocess.run([sys.executable, "run.py", f"resume={run_dir}", "rank=16"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "no other arguments" in refused.stderr
    second = subprocess.run([sys.executable, "run.py", f"resume={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["resumed_from_step"] == 4 and result["train_loss"]["steps"] == 6
    assert list((tmp_path / "logs" / "runs").iterdir()) == [run_dir]  # no stray run directory
    assert not (run_dir / "checkpoint").exists()  # a finished run keeps its adapter, not its checkpoint
    again = subprocess.run([sys.executable, "run.py", f"resume={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "no checkpoint" in again.stderr


def test_resume_refuses_a_changed_config(tmp_path):
    overrides = [*RESUMABLE, "method=lora", *INTERRUPT_AT_5]
    with pytest.raises(RunInterrupted):
        train(tmp_path, overrides)
    with pytest.raises(ValueError, match=r"differs from the one it recorded at \['optim.lr'\]"):
        train(tmp_path, [*overrides, "optim.lr=1e-3", f"resume={tmp_path / 'run'}"])
    assert run_result(tmp_path)["status"] == "interrupted"  # the earlier result is kept
