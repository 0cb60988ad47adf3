"""Lightning strategies that need Python objects a YAML cannot spell (trainer=fsdp), and the check that an optional
strategy's package is installed before anything is loaded."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

OPTIONAL_PACKAGES = {"deepspeed": 'pip install -e ".[deepspeed]"'}


def fsdp_strategy(layer_classes: list[str], **kwargs: Any):
    """Lightning's FSDPStrategy wrapping each of ``layer_classes`` (dotted paths) as one FSDP unit."""
    from lightning.pytorch.strategies import FSDPStrategy

    classes = set()
    for dotted in layer_classes:
        module_name, _, class_name = dotted.rpartition(".")
        try:
            classes.add(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError) as error:
            raise ValueError(f"trainer.lightning.strategy.layer_classes: cannot import {dotted!r} ({error})") from None
    return FSDPStrategy(auto_wrap_policy=classes, **kwargs)


def check_strategy_available(strategy: Any) -> None:
    """A strategy named by string whose package is missing fails now, naming the install command."""
    if not isinstance(strategy, str):
        return
    for package, install in OPTIONAL_PACKAGES.items():
        if strategy.startswith(package) and importlib.util.find_spec(package) is None:
            raise ValueError(f"trainer.lightning.strategy={strategy!r} needs {package}, which is not installed: {install}")
