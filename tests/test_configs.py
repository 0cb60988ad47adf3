"""Every YAML in every config group composes; bad choices fail with the list of valid ones."""

from __future__ import annotations

import pytest
from conftest import CONF_DIR, config_groups
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

GROUP_OPTIONS = [(group, option) for group, options in config_groups().items() for option in options]


def test_groups_exist():
    groups = config_groups()
    for group in ("model", "task", "method", "trainer", "logger", "paths", "experiment", "ablation", "callbacks"):
        assert group in groups, f"conf/{group}/ is missing"
    assert {"tiny_llama", "llama2_7b", "llama3_8b"} <= set(groups["model"])
    assert {"lora", "full"} <= set(groups["method"])
    assert {"default", "debug"} <= set(groups["trainer"])
    assert {"wandb", "csv", "none"} <= set(groups["logger"])


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_yaml_composes_and_resolves(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["seed"] == (0 if option.lstrip("_").startswith("real_") else 42)  # the real comparison chooses rates at seed 0
    if group == "method":
        assert cfg.method.name == option
        assert "_target_" in cfg.method.init
        if cfg.method.peft is not None:
            assert cfg.method.peft.r == cfg.rank


@pytest.mark.parametrize("path", sorted(CONF_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_yaml_starts_with_its_command(path):
    lines = path.read_text().splitlines()
    header = lines[: next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))]
    # Hydra reads "# @package" from the first line only, so such files give the command on line 2.
    commands = ("# python run.py", "# python -m astra.compare")  # a comparison's config: the compare command
    assert any(line.startswith(commands) for line in header[:2]), f"{path} must start with its command"


@pytest.mark.parametrize("group,bad", [("method", "nope"), ("task", "not_a_task"), ("model", "gpt5")])
def test_unknown_choice_lists_valid_choices(compose_cfg, group, bad):
    with pytest.raises(MissingConfigException) as info:
        compose_cfg([f"{group}={bad}"])
    message = str(info.value)
    assert bad in message
    for valid in config_groups()[group]:
        assert valid in message, f"error for {group}={bad} should list {valid!r}: {message}"
