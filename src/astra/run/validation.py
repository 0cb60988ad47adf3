"""Checks of a run's configuration before any model is loaded: each error names the key, the bad value and
what would be accepted (a silent no-op such as ``alpha=0``, which trains nothing, is an error too)."""

from __future__ import annotations

import math
import os
import tempfile
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
    number_in(cfg, "optim.weight_decay", 0.0, math.inf)
    number_in(cfg, "optim.warmup_ratio", 0.0, 1.0)
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
