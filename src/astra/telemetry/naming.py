"""Metric naming: module types and factor kinds derived from parameter / module names.

Type rule: the adapted (or plain) module's last name component, without a ``_proj`` suffix, e.g.
``...self_attn.q_proj`` -> ``q``, ``...mlp.gate_proj`` -> ``gate``, a BERT-style ``...attention.self.query``
-> ``query``, ``...output.dense`` -> ``dense``, ``model.norm`` -> ``norm``, ``lm_head`` -> ``lm_head``.
Numeric components (``ModuleList`` indices) are skipped.

Factor rule (for parameters): ``lora_A``/``lora_embedding_A`` -> ``A``, ``lora_B``/``lora_embedding_B`` -> ``B``,
DoRA's ``lora_magnitude_vector`` -> ``m``, anything else (full fine-tuning, a trained ``base_layer``,
biases, norms) -> ``W``.
"""

from __future__ import annotations

import re

# Order in which the usual LLaMA types are listed; other types follow in first-seen order.
CANONICAL_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
FACTORS = ("A", "B", "m", "W")

_FACTOR_TOKENS = {
    "lora_A": "A",
    "lora_B": "B",
    "lora_embedding_A": "A",
    "lora_embedding_B": "B",
    "lora_magnitude_vector": "m",
    "base_layer": "W",
}
_PEFT_PREFIX = "base_model.model."
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def module_type(module_name: str) -> str:
    """Short type of a module from its qualified name (see the module docstring)."""
    parts = [p for p in module_name.split(".") if p and not p.isdigit()]
    if not parts:
        return module_name or "root"
    last = parts[-1]
    if last.endswith("_proj") and len(last) > len("_proj"):
        last = last[: -len("_proj")]
    return last


def split_param_name(param_name: str) -> tuple[str, str]:
    """``(module_name, factor)`` of a parameter name.

    ``x.q_proj.lora_A.default.weight`` -> (``x.q_proj``, ``A``); ``x.q_proj.weight`` -> (``x.q_proj``, ``W``).
    """
    parts = param_name.split(".")
    for index, token in enumerate(parts):
        factor = _FACTOR_TOKENS.get(token)
        if factor is not None:
            return ".".join(parts[:index]), factor
    return ".".join(parts[:-1]), "W"


def param_type_and_factor(param_name: str) -> tuple[str, str]:
    """``(module type, factor)`` of a parameter name, e.g. ``(q, A)``."""
    module_name, factor = split_param_name(param_name)
    if not module_name:  # a parameter registered on the root module
        return param_name, factor
    return module_type(module_name), factor


def short_layer_name(module_name: str) -> str:
    """Drop wrapper prefixes: ``[model.]base_model.model.model.layers.0.self_attn.q_proj`` ->
    ``layers.0.self_attn.q_proj``; ``model.model.layers.0.mlp.up_proj`` -> ``layers.0.mlp.up_proj``."""
    name = module_name
    if _PEFT_PREFIX in name:
        name = name[name.rindex(_PEFT_PREFIX) + len(_PEFT_PREFIX):]
    while name.startswith("model.") and len(name) > len("model."):
        name = name[len("model."):]
    return _UNSAFE.sub("_", name)


def order_types(types) -> list[str]:
    """Canonical LLaMA types first (q, k, v, o, gate, up, down), then the rest in first-seen order."""
    seen = list(dict.fromkeys(types))
    return [t for t in CANONICAL_TYPES if t in seen] + [t for t in seen if t not in CANONICAL_TYPES]
