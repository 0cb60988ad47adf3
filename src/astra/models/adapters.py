"""Finding a model's PEFT LoRA layers: the generic adapter helpers that methods, calibration and telemetry share.

It sits below all three (it imports none of them), so imports run one way: methods -> calibration, and
telemetry never reaches up into ``astra.methods``.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

ADAPTER = "default"  # PEFT's adapter name when none is given


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, peft LoraLayer)`` for every adapted linear layer, in model order."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            yield name, module
