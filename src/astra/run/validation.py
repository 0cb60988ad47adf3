"""Checks of a run's configuration before any model is loaded: each error names the key, the bad value and
what would be accepted (a silent no-op such as ``alpha=0``, which trains nothing, is an error too)."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    pass


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(cfg: DictConfig, key: str, optional: bool = False, also: tuple = ()) -> None:
    value = _value(cfg, key)
    if (value is None and optional) or value in also or (_is_int(value) and value >= 1):
        return
    accepted = "a positive integer" + (" or null" if optional else "") + "".join(f" or {a!r}" for a in also)
    raise ConfigError(f"{key}={value!r} is not valid: expected {accepted} (e.g. {key}=8)")


def positive_finite(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if _is_number(value) and math.isfinite(value) and value > 0:
        return
    raise ConfigError(f"{key}={value!r} is not valid: expected a finite number greater than 0")


def number_in(cfg: DictConfig, key: str, low: float, high: float) -> None:
    value = _value(cfg, key)
    if _is_number(value) and math.isfinite(value) and low <= value <= high:
        return
    raise ConfigError(f"{key}={value!r} is not valid: expected a number in [{low}, {high}]")


def writable_directory(key: str, path: Any) -> None:
    """Create the directory if needed and write a probe file there, so a bad path fails before training."""
    if not path:
        raise ConfigError(f"{key}={path!r} is not valid: expected a directory path")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise ConfigError(f"{key}={str(path)!r} is not a writable directory ({error.strerror or error}); "
                          "choose a directory this user can write to") from None


def validate_run_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid setting of the run."""
    positive_int(cfg, "rank")
    positive_finite(cfg, "alpha")
    if not _is_int(_value(cfg, "seed")):
        raise ConfigError(f"seed={_value(cfg, 'seed')!r} is not valid: expected an integer")
    positive_finite(cfg, "optim.lr")
    families = _value(cfg, "method.task_families")  # e.g. head_only: a classification head is what it trains
    if families is not None and _value(cfg, "task.family") not in families:
        raise ConfigError(
            f"method={_value(cfg, 'method.name')} runs on tasks of task.family {', '.join(families)} only; "
            f"task={_value(cfg, 'task.name')} is task.family={_value(cfg, 'task.family')!r} (e.g. task=qnli)"
        )
    number_in(cfg, "optim.weight_decay", 0.0, math.inf)
    number_in(cfg, "optim.warmup_ratio", 0.0, 1.0)
    if _value(cfg, "optim.head_lr") is not None and _value(cfg, "method.trains") is not False:  # untrained: no rate applies
        positive_finite(cfg, "optim.head_lr")
        if _value(cfg, "method.peft") is None or _value(cfg, "task.family") != "glue":
            raise ConfigError(
                f"optim.head_lr={_value(cfg, 'optim.head_lr')!r} is the classification head's own rate beside an "
                f"adapter's: method={_value(cfg, 'method.name')} task={_value(cfg, 'task.name')} has no such pair (it "
                "needs an adapter method and a classification task, e.g. method=lora task=qnli); set "
                "optim.head_lr=null")
    positive_int(cfg, "trainer.batch_size")
    positive_int(cfg, "trainer.lightning.accumulate_grad_batches")
    positive_int(cfg, "trainer.eval_limit", optional=True)
    positive_int(cfg, "trainer.checkpoint_every_n_steps", optional=True)
    positive_int(cfg, "trainer.check_finite_every_n_steps", also=("auto",))
    positive_int(cfg, "task.max_length")
    positive_int(cfg, "task.train_limit", optional=True)
    positive_int(cfg, "task.eval.batch_size")
    if "max_new_tokens" in cfg.task.eval:  # generation tasks only (GLUE classifies)
        positive_int(cfg, "task.eval.max_new_tokens")
    if _value(cfg, "task.validation_size") is not None:
        number_in(cfg, "task.validation_size", 0.0, math.inf)
    if _value(cfg, "method.calibration") is not None:
        positive_int(cfg, "method.calibration.n_samples")
        positive_int(cfg, "method.calibration.batch_size")
        text = _value(cfg, "method.calibration.text")
        if text not in (None, "train", "reference"):
            raise ConfigError(f"method.calibration.text={text!r} is not valid: expected 'train' or 'reference'")
    if _value(cfg, "forgetting.enabled"):
        for key in ("forgetting.max_length", "forgetting.max_windows", "forgetting.batch_size"):
            positive_int(cfg, key)
    from astra.training.strategies import check_strategy_available

    try:  # an optional strategy's package (DeepSpeed) is checked before the model loads
        check_strategy_available(_value(cfg, "trainer.lightning.strategy"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    writable_directory("paths.results_dir", _value(cfg, "paths.results_dir"))
    writable_directory("paths.output_dir", _value(cfg, "paths.output_dir"))
    cache_dir = _value(cfg, "paths.cache_dir")
    if cache_dir:
        writable_directory("paths.cache_dir", os.path.expanduser(str(cache_dir)))


# Settings that only take effect under another setting. Giving one without the other used to be silently ignored
# (task.data.train=<file> without task.source=files trained on the shipped sample and finished ok): now it is refused,
# naming the setting that would make it count. ``given``: "set" (the key is not null in the composed config: its
# default is null) or "override" (the key was given on the command line: its default is a real value).
@dataclass(frozen=True)
class DependentSetting:
    prefix: str  # the key, or a prefix ending in "." for every key below it
    needs: str  # the key that must hold one of ``values`` for the setting to take effect
    values: tuple
    given: str  # "set" or "override"
    family: str | None = None  # the rule applies to tasks of this family only

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefix) if self.prefix.endswith(".") else key == self.prefix


DEPENDENT_SETTINGS = (
    DependentSetting("task.data.", "task.source", ("files",), "set"),
    DependentSetting("task.hub.", "task.source", ("hub",), "override"),
    DependentSetting("forgetting.file", "forgetting.source", ("file",), "set"),
    DependentSetting("forgetting.hub.", "forgetting.source", ("hub",), "override"),
    DependentSetting("forgetting.", "forgetting.enabled", (True,), "override"),
    DependentSetting("trainer.val_size", "task.validation_size", (None,), "override"),
    DependentSetting("task.eval.max_new_tokens", "task.eval.protocol", ("generation",), "override", "commonsense"),
    DependentSetting("task.train_benchmarks", "task.train_format", ("lm_eval_query",), "set", "commonsense"),
    DependentSetting("task.eval.also_loglikelihood", "task.eval.protocol", ("generation",), "override", "commonsense"),
    *(DependentSetting(f"method.init.{key}", "method.init.eigensolver", ("randomized", "auto"), "override")
      for key in ("oversample", "n_iter", "tolerance", "retry_oversample", "on_unconverged")),
)


def override_keys(overrides: list[str]) -> list[str]:
    """The keys of command-line overrides (``+a.b=1`` -> ``a.b``; group choices such as ``task=qnli`` included)."""
    keys = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra."):
            keys.append(key)
    return keys


def _leaf_keys(cfg: DictConfig, prefix: str) -> list[str]:
    """``prefix`` itself when it names a value, else every non-null leaf below ``prefix.``."""
    node = _value(cfg, prefix.rstrip("."))
    if not OmegaConf.is_config(node):
        return [prefix.rstrip(".")] if node is not None else []
    plain = OmegaConf.to_container(node, resolve=False)
    found = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}")
        elif value is not None:
            found.append(path)

    walk(plain, prefix.rstrip("."))
    return found


def check_dependent_settings(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuse a setting that would be silently ignored (:data:`DEPENDENT_SETTINGS`)."""
    given_on_command_line = override_keys(overrides)
    for rule in DEPENDENT_SETTINGS:
        if rule.family is not None and _value(cfg, "task.family") != rule.family:
            continue
        if _value(cfg, rule.needs) in rule.values:
            continue
        if rule.given == "set":
            given = [key for key in _leaf_keys(cfg, rule.prefix) if rule.covers(key)]
        else:
            given = [key for key in given_on_command_line if rule.covers(key) and key != rule.needs]
        if given:
            wanted = " or ".join(f"{rule.needs}={value}" if value is not None else f"{rule.needs}=null"
                                 for value in rule.values)  # fmt: skip
            raise ConfigError(
                f"{given[0]} is given but takes effect only with {wanted}; here {rule.needs}="
                f"{_value(cfg, rule.needs)!r}, so it would be silently ignored. Add {wanted}, or drop {given[0]}"
            )


def planned_optimizer_steps(cfg: DictConfig, train_rows: int) -> int:
    """How many optimizer steps Lightning will take on ``train_rows`` rows with the trainer settings."""
    lightning = cfg.trainer.lightning
    batches = math.ceil(train_rows / int(cfg.trainer.batch_size))
    limit = lightning.get("limit_train_batches")
    if limit is not None:
        batches = min(batches, int(limit)) if _is_int(limit) else int(batches * float(limit))
    per_epoch = math.ceil(batches / int(lightning.get("accumulate_grad_batches", 1))) if batches else 0
    max_epochs, max_steps = lightning.get("max_epochs"), int(lightning.get("max_steps", -1))
    if max_epochs is None or int(max_epochs) < 0:
        max_epochs = 1000 if max_steps < 0 else max_steps  # Lightning's defaults: 1000 epochs without max_steps
    steps = per_epoch * int(max_epochs)
    return min(steps, max_steps) if max_steps >= 0 else steps


def check_trains(cfg: DictConfig, train_rows: int) -> None:
    """A training method with zero optimizer steps would be recorded as a trained row that never trained."""
    if not cfg.method.get("trains", True):
        return
    steps = planned_optimizer_steps(cfg, train_rows)
    if steps < 1:
        lightning = cfg.trainer.lightning
        raise ConfigError(
            f"method={cfg.method.name} would take 0 optimizer steps (trainer.lightning.max_epochs="
            f"{lightning.get('max_epochs')}, max_steps={lightning.get('max_steps')}, limit_train_batches="
            f"{lightning.get('limit_train_batches')}, {train_rows} training rows): a result would read as trained. "
            "Give at least one step, or use method=untrained for the model as loaded"
        )
