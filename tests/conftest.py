"""Shared fixtures: every output in a temp dir, no network, configs composed like run.py composes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# Set before anything imports huggingface_hub or wandb.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest-xdist workers on two cores: one thread each, or four threads fight over two cores.
# Set before anything imports torch; the run.py subprocesses of some tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """HF and W&B homes in the test's temp dir, so nothing lands in the home folder."""
    for variable, sub in [("HF_HOME", "hf"), ("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"),
                          ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_DATA_DIR", "wandb-data")]:  # fmt: skip
        monkeypatch.setenv(variable, str(tmp_path / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield


def compose_config(tmp_path: Path, overrides: list[str] = ()):
    """The run config as run.py would see it, with every path inside ``tmp_path``."""
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - registers ${astra_uid:} and ${astra_or:}, as run.py does

    paths = [
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.results_dir={tmp_path / 'results'}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*paths, *overrides])


def config_groups() -> dict[str, list[str]]:
    """Every option of every config group, read from conf/ (so new YAMLs are tested automatically)."""
    groups = {}
    for group_dir in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        groups[group_dir.name] = sorted(p.stem for p in group_dir.glob("*.yaml"))
    return groups


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one intra-op thread avoids oversubscription stalls when other jobs share the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose_cfg(tmp_path):
    return lambda overrides=(): compose_config(tmp_path, list(overrides))
