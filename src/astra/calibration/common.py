"""Pieces shared by the statistics engines: model state, adapter targets, batches, passes and the disk cache."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astra.models.adapters import lora_layers

log = logging.getLogger(__name__)

ACCUMULATION_DTYPES = {"float32": torch.float32, "float64": torch.float64}
CACHE_FORMAT = 3  # bump when the layout of cached statistics or of the key changes (3: content-hashed key)


class NonFiniteStatisticsError(FloatingPointError):
    """Calibration statistics of a layer contain NaN or Inf."""


def resolve_dtype(dtype: Any) -> torch.dtype:
    """``"float32"`` / ``"float64"`` (or the torch dtypes) -> torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype) and dtype in ACCUMULATION_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in ACCUMULATION_DTYPES:
        return ACCUMULATION_DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not one of {sorted(ACCUMULATION_DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class CalibrationResult:
    """Per-layer statistics plus how they were obtained."""

    stats: dict[str, Any]
    n_samples: int
    n_batches: int
    cache: str  # "hit", "miss" (computed and saved) or "off"
    cache_file: str | None = None
    seconds: float = 0.0

    def report(self) -> dict:
        return {
            "n_samples": self.n_samples,
            "n_batches": self.n_batches,
            "cache": self.cache,
            "cache_file": self.cache_file,
            "calibration_seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------------- model state


@contextlib.contextmanager
def preserve_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval mode and every parameter's ``requires_grad`` on exit, even on error."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model: switch every PEFT tuner layer's adapters off, restore the flags on exit.

    Sets the layers' flag directly (no ``set_adapter`` side effects); merged adapters are refused because
    PEFT would silently unmerge them on the first forward.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        yield
        return
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    merged = [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer) and module.merged]
    if merged:
        raise RuntimeError(f"unmerge the adapters before calibration; merged layers: {merged[:5]}")
    flags = [(layer, layer._disable_adapters) for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = True
        yield
    finally:
        for layer, flag in flags:
            layer._disable_adapters = flag


def lora_targets(model: nn.Module, adapter: str) -> dict[str, nn.Module]:
    """``{name: peft LoraLayer}`` for every adapted linear layer, checked to be a plain (non-DoRA) ``nn.Linear``."""
    targets = {}
    for name, layer in lora_layers(model):
        if adapter not in layer.lora_A:
            continue
        base = layer.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise NotImplementedError(
                f"layer {name!r}: only nn.Linear base layers are supported, got {type(base).__name__}"
            )
        if getattr(layer, "fan_in_fan_out", False):
            raise NotImplementedError(f"layer {name!r}: fan_in_fan_out (Conv1D-style) weights are not supported")
        if layer.use_dora.get(adapter, False):
            raise NotImplementedError(f"layer {name!r}: DoRA's magnitude would need re-initialising; not supported")
        targets[name] = layer
    if not targets:
        raise ValueError(f"the model has no PEFT LoRA layers with adapter {adapter!r}")
    return targets


def model_input_device(model: nn.Module) -> torch.device:
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if callable(get_embeddings):
        try:
            embeddings = get_embeddings()
            if embeddings is not None:
                return embeddings.weight.device
        except (NotImplementedError, AttributeError):
            pass
    return next(model.parameters()).device


def forward_extras(model: nn.Module, *, need_logits: bool) -> dict[str, Any]:
    """Keyword arguments that make a Hugging Face forward cheaper: no KV cache, and no full logits if unused."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return {}
    extras: dict[str, Any] = {}
    if "use_cache" in params:
        extras["use_cache"] = False
    if not need_logits and "logits_to_keep" in params:
        extras["logits_to_keep"] = 1
    return extras


# --------------------------------------------------------------------------------------------- batches


def local_sample_count(loader: Any, n_samples: int | None) -> int | None:
    """``n_samples`` is the whole calibration set (it is part of the cache key); a rank's sharded loader
    (``distributed.shard_loader``) holds its share, which is what this process must see."""
    dataset = getattr(loader, "dataset", None)
    return len(dataset) if getattr(dataset, "shard_of", None) else n_samples


def check_calibration_size(loader: Any, n_samples: int | None, method: str) -> None:
    """Stop early and clearly when there is no calibration loader or it holds fewer samples than asked for."""
    n_samples = local_sample_count(loader, n_samples)
    if loader is None:
        raise ValueError(
            f"{method} needs calibration data, but the calibration loader is None (method.calibration null?)"
        )
    if n_samples is None:
        return
    if int(n_samples) < 1:
        raise ValueError(f"{method}: n_samples={n_samples} must be at least 1")
    dataset = getattr(loader, "dataset", None)
    try:
        available = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return  # an iterable dataset: counted while iterating
    if available < n_samples:
        raise ValueError(
            f"{method} asks for n_samples={n_samples} calibration samples but the calibration loader holds only "
            f"{available}; lower method.calibration.n_samples or use a larger training split"
        )


def expected_batches(loader: Any, n_samples: int | None) -> int | None:
    n_samples = local_sample_count(loader, n_samples)
    batch_size = getattr(loader, "batch_size", None)
    if n_samples is not None and batch_size:
        return math.ceil(n_samples / batch_size)
    try:
        return len(loader)
    except TypeError:
        return None


def iter_batches(
    loader: Any, n_samples: int | None, device: torch.device, keys: Sequence[str], method: str
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches (only ``keys``, on ``device``); exactly ``n_samples`` rows in all when it is given."""
    n_samples = local_sample_count(loader, n_samples)
    seen = 0
    for batch in loader:
        if n_samples is not None and seen >= n_samples:
            break
        rows = batch["input_ids"].shape[0]
        take = rows if n_samples is None else min(rows, n_samples - seen)
        out = {}
        for key in keys:
            value = batch.get(key) if isinstance(batch, Mapping) else None
            if value is not None:
                out[key] = value[:take].to(device, non_blocking=True)
        seen += take
        yield out
    if n_samples is not None and seen < n_samples:
        raise ValueError(
            f"{method} asks for n_samples={n_samples} calibration samples but the loader yielded only {seen}"
        )


def layer_groups(names: Sequence[str], layers_per_pass: int | None) -> list[list[str]]:
    """Split the layers into consecutive groups, one pass over the calibration data each."""
    names = list(names)
    if layers_per_pass is None:
        return [names]
    if int(layers_per_pass) < 1:
        raise ValueError(f"layers_per_pass={layers_per_pass} must be a positive integer or null (all layers at once)")
    step = int(layers_per_pass)
    return [names[i : i + step] for i in range(0, len(names), step)]


def check_finite(name: str, tensor: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteStatisticsError(
            f"the {what} of layer {name!r} contain NaN or Inf (a non-finite model output, an all-zero output "
            f"row under per-sample normalisation, or a batch without labelled tokens?)"
        )


def scalars_to_host(values: Sequence[torch.Tensor]) -> list:
    """Python numbers of many 0-dim tensors with one host read per device (not one per tensor)."""
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(values):
        by_device.setdefault(value.device, []).append(index)
    out: list = [None] * len(values)
    for indices in by_device.values():
        for index, number in zip(indices, torch.stack([values[i] for i in indices]).tolist()):
            out[index] = number
    return out


def check_all_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """:func:`check_finite` for many layers with one host read per device (the first non-finite layer is named).

    A NaN or Inf anywhere makes a tensor's sum non-finite: one reduction per tensor; a non-finite sum is then
    checked element by element (a finite tensor whose sum overflows is not an error)."""
    flags = scalars_to_host([torch.isfinite(tensor.sum()) for tensor in tensors.values()])
    for (name, tensor), ok in zip(tensors.items(), flags):
        if not ok:
            check_finite(name, tensor, what)


def stable_seed(seed: int, name: str) -> int:
    """A per-layer seed derived from the run seed and the layer name (independent across layers and seeds)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "big")


# --------------------------------------------------------------------------------------------- cache


def cache_file_for(context: Any, kind: str, options: Mapping[str, Any]) -> tuple[Path | None, str | None]:
    """Cache path and its key (JSON) for statistics of ``kind`` under ``context.cache_dir``; (None, None) if off.

    The key is the context's data identity (model fingerprint and calibration-data digest, see
    :func:`astra.calibration.identity.calibration_cache_identity`) plus the statistics options, so changed
    data, weights, layer set or option never reuses stale statistics.
    """
    cache_dir = getattr(context, "cache_dir", None)
    if cache_dir is None:
        return None, None
    key = {"format": CACHE_FORMAT, "kind": kind, "data": getattr(context, "cache_key", {}), "options": dict(options)}
    key_json = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(key_json.encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{kind}-{digest}.pt", key_json


def load_cache(path: Path | None, key_json: str | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute
        log.warning("ignoring unreadable calibration cache %s: %s", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("key") != key_json:
        log.warning("ignoring calibration cache %s: its key does not match", path)
        return None
    return payload["stats"]


def save_cache(path: Path | None, key_json: str | None, stats: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key": key_json, "stats": stats}, tmp)
    os.replace(tmp, path)
    log.info("saved calibration statistics to %s", path)
