"""Experiment and ablation configs: every cell of every grid composes, one cell of each dry-runs (two steps on a tiny
model); trainer strategies and the SLURM launcher config compose; a multirun through submitit_local skips cells that
already have an ok result and reruns failed ones."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
from conftest import CONF_DIR, ROOT, compose_config, config_groups

from astra.run import runner
from astra.run.validation import ConfigError, validate_run_config
from astra.tasks.base import get_family

# Grids run by `run.py -m`; comparisons (compare_*: no sweep, run by `python -m astra.compare`) are test_compare's.
EXPERIMENTS = [name for name in config_groups()["experiment"] if not name.startswith(("_", "compare_"))]
ABLATIONS = config_groups()["ablation"]
TINY = ["logger=none", "callbacks=none", "trainer.lightning.max_steps=2", "trainer.lightning.max_epochs=1",
        "trainer.eval_limit=2", "trainer.batch_size=2", "trainer.lightning.accumulate_grad_batches=1",
        "trainer.lightning.precision=32-true", "calibration_samples=4", "forgetting.max_windows=2",
        "task.source=sample", "task.train_limit=null", "task.max_length=256"]  # fmt: skip


def sweep_of(kind: str, name: str) -> dict[str, list[str]]:
    """The grid's sweeper params as Hydra composes them (a *_smoke file inherits its parent's)."""
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - the config resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{kind}={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    return {key: str(values).split(",") for key, values in params.items()}


def cells(kind: str, name: str) -> list[list[str]]:
    sweep = sweep_of(kind, name)
    return [[f"{key}={value}" for key, value in zip(sweep, values)] for values in itertools.product(*sweep.values())]


def tiny_overrides(cfg) -> list[str]:
    encoder = cfg.task.family == "glue"
    extra = ["model=tiny_bert"] if encoder else ["model=tiny_llama", "task.eval.max_new_tokens=4"]
    return extra + (["task.eval.allow_code_execution=true"] if cfg.task.family == "code" else [])


def test_every_experiment_and_ablation_is_a_grid():
    assert {"nlg_math", "nlg_code", "commonsense", "nlu_glue"} <= set(EXPERIMENTS)
    assert {f"{name}_smoke" for name in ("nlg_math", "nlg_code", "commonsense", "nlu_glue")} <= set(EXPERIMENTS)
    assert set(ABLATIONS) == {"eigenvectors", "rank", "calib_size", "calib_source", "statistics", "seeds", "lr"}
    for name in EXPERIMENTS:
        if not name.startswith("real_"):  # the paper's grids; real_* are the real comparison's phases (issue 11)
            assert sweep_of("experiment", name)["method"] == ["full", "lora", "dora", "pissa", "lora_ga", "astra"], name
        header = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[2]
        assert header.startswith(("# Reproduces:", "# The ")), f"{name}: the header says what it reproduces"


@pytest.mark.parametrize("kind,name", [("experiment", e) for e in EXPERIMENTS] + [("ablation", a) for a in ABLATIONS])
def test_every_cell_composes_and_validates(tmp_path, kind, name):
    for cell in cells(kind, name):
        cfg = compose_config(tmp_path, [f"{kind}={name}", *cell])
        validate_run_config(cfg)
        assert cfg.experiment_name in (name, f"ablation_{name}")
        if cfg.method.get("calibration"):
            assert cfg.method.calibration.n_samples >= 1 and cfg.method.calibration.text in ("train", "reference")


@pytest.mark.parametrize("kind,name", [("experiment", e) for e in EXPERIMENTS] + [("ablation", a) for a in ABLATIONS])
def test_one_cell_of_each_grid_dry_runs(tmp_path, monkeypatch, kind, name):
    monkeypatch.setenv("ASTRA_ALLOW_CODE_EXECUTION", "1")
    cell = cells(kind, name)[-1]  # the last cell: astra where methods are swept, the largest value otherwise
    if kind == "ablation":
        cell = [c for c in cell if not c.startswith("calibration_samples=")]  # 256 rows > the tiny run's budget
        cell += ["task=gsm8k"] + (["rank=8"] if name == "rank" else [])
    cfg = compose_config(tmp_path, [f"{kind}={name}", *cell])
    # The real comparison reads ../shared data by row ids: the tiny run reads the shipped sample instead, so its files
    # are dropped too (given without task.source=files they would be refused as silently ignored).
    real = ["task.row_ids=null", "task.data=null"] if name.startswith("real_") else []
    cfg = compose_config(tmp_path, [f"{kind}={name}", *cell, *TINY, *tiny_overrides(cfg), *real])
    runner.train(cfg, overrides=cell)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "ok" and result["steps_done"] == 2 and result["experiment"] == cfg.experiment_name


def test_rank_ablation_keeps_the_scale_and_calib_source_reads_other_data(tmp_path):
    cfg = compose_config(tmp_path, ["ablation=rank", "rank=64"])
    assert cfg.alpha == 64
    from astra.calibration.source import calibration_loader
    from astra.models.build import build_tokenizer
    from astra.run import steps

    for source, expected in (("task:arc_e", "Please choose the correct answer"), ("generic_text", None)):
        cfg = compose_config(tmp_path, ["method=astra", f"calibration_source={source}", "calibration_samples=4",
                                        "task.max_length=256"])  # fmt: skip
        tokenizer = build_tokenizer(cfg.model)
        loader = calibration_loader(cfg, steps.build_datamodule(cfg, get_family(cfg.task.family), tokenizer), get_family(cfg.task.family), family_of=get_family)
        batch = next(iter(loader))
        assert batch["input_ids"].shape == (4, 256)
        text = tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
        assert expected in text if expected else (batch["attention_mask"] == 1).all()  # generic text: full windows
    cfg = compose_config(tmp_path, ["method=astra", "calibration_source=task:nope"])
    with pytest.raises(ValueError, match=r"calibration_source=task:nope: no task config .* expected 'task'"):
        calibration_loader(cfg, steps.build_datamodule(cfg, get_family(cfg.task.family), build_tokenizer(cfg.model)), get_family(cfg.task.family), family_of=get_family)


@pytest.mark.parametrize("trainer", config_groups()["trainer"])
def test_trainer_configs_compose(tmp_path, trainer):
    cfg = compose_config(tmp_path, [f"trainer={trainer}"])
    if trainer == "deepspeed_zero2":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            with pytest.raises(ConfigError, match=r'needs deepspeed, which is not installed: pip install -e ".\[deepspeed\]"'):
                validate_run_config(cfg)
            return
    validate_run_config(cfg)
    if trainer == "fsdp":
        from hydra.utils import instantiate
        from lightning.pytorch.strategies import FSDPStrategy

        assert isinstance(instantiate(cfg.trainer.lightning.strategy), FSDPStrategy)


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_task == 1 and launcher.array_parallelism == 8


def _multirun(tmp_path, *extra: str, ranks: str = "4,4096") -> subprocess.CompletedProcess:
    command = [sys.executable, "run.py", "-m", "method=lora", f"rank={ranks}", "trainer=debug",
               "trainer.lightning.max_steps=2", "trainer.eval_limit=2", "task.eval.max_new_tokens=4", "logger=none",
               "callbacks=none", "forgetting.enabled=false", f"paths.root_dir={tmp_path}", *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _results(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "experiments" / "results" / "default").glob("*.json"))]


def test_multirun_skips_ok_cells_and_reruns_failed_ones(tmp_path):
    first = _multirun(tmp_path, "hydra/launcher=submitit_local")  # jobs in their own processes, as on SLURM
    assert first.returncode == 1, first.stderr[-3000:]
    assert "1 of 2 jobs did not finish ok" in first.stderr and "rank=4096" in first.stderr
    assert sorted(r["status"] for r in _results(tmp_path)) == ["failed", "ok"]

    second = _multirun(tmp_path)  # the same grid again: the ok cell is skipped, the failed one runs again
    assert second.returncode == 1 and "1 of 2 jobs did not finish ok" in second.stderr
    assert sorted(r["status"] for r in _results(tmp_path)) == ["failed", "failed", "ok"]
    skipped = list((tmp_path / "logs" / "multiruns").rglob("skipped.json"))
    assert len(skipped) == 1 and json.loads(skipped[0].read_text())["existing_result"].endswith(".json")

    third = _multirun(tmp_path, "skip_existing=false", ranks="4")  # forced: the ok cell runs again
    assert third.returncode == 0, third.stderr[-3000:]
    assert sorted(r["status"] for r in _results(tmp_path)) == ["failed", "failed", "ok", "ok"]


def test_shipped_real_splits_are_what_make_splits_writes():
    """The row-id splits of the real comparison regenerate byte for byte from the data (skipped without it)."""
    import importlib.util
    from pathlib import Path

    root = Path(os.environ.get("ASTRA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (root / "qnli" / "dev.tsv").is_file():
        pytest.skip(f"{root} is not here (set ASTRA_SHARED_DATA)")
    spec = importlib.util.spec_from_file_location("make_splits", ROOT / "experiments" / "real" / "make_splits.py")
    make_splits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_splits)
    for name, split in (("qnli", make_splits.qnli_split(root / "qnli" / "dev.tsv")),
                        ("commonsense", make_splits.commonsense_split(root))):  # fmt: skip
        shipped = json.loads((ROOT / "experiments" / "real" / f"{name}_split.json").read_text())
        assert shipped == json.loads(json.dumps(split)), name
    qnli = make_splits.qnli_split(root / "qnli" / "dev.tsv")
    assert not set(qnli["train"]) & set(qnli["test"]) and not set(qnli["validation"]) & set(qnli["test"])
