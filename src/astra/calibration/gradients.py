"""Full-weight gradients of target layers averaged over calibration batches (the statistic LoRA-GA decomposes).

G = 1/n_batches * sum_b dL_b/dW, L_b the model's loss on batch b (Hugging Face causal LM: mean cross-entropy over
the batch's labelled tokens), as in the LoRA-GA reference's ``estimate_gradient``. Only the target base weights
require grad; a post-accumulate-grad hook folds each weight's gradient into a running sum (float32/float64, on the
weight's device or on CPU) and frees it at once, so at most one layer's raw gradient is alive at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from astra.calibration import distributed
from astra.calibration.common import (
    CalibrationResult,
    adapters_disabled,
    cache_file_for,
    check_calibration_size,
    check_finite,
    dtype_name,
    expected_batches,
    forward_extras,
    iter_batches,
    layer_groups,
    load_cache,
    model_input_device,
    preserve_model_state,
    resolve_dtype,
    save_cache,
)

log = logging.getLogger(__name__)


def _fold_into(total: torch.Tensor, counts: dict, name: str):
    def fold(param: torch.Tensor) -> None:
        total.add_(param.grad.to(device=total.device, dtype=total.dtype))
        param.grad = None
        counts[name] = counts.get(name, 0) + 1

    return fold


def collect_weight_gradients(
    model: nn.Module,
    calibration_loader: Any,
    layers: Mapping[str, nn.Module],
    *,
    dtype: Any = "float32",
    train_mode: bool = True,
    layers_per_pass: int | None = None,
    offload_to_cpu: bool = False,
    cache: bool = True,
    context: Any = None,
    n_samples: int | None = None,
    progress: bool = True,
    method: str = "lora_ga",
) -> CalibrationResult:
    """Return ``{name: mean gradient of layers[name].weight}`` (adapters off, base weights only).

    ``train_mode``: run the forward in train mode (the LoRA-GA reference calls ``model.train()``); modes,
    ``requires_grad`` flags and any pre-existing ``.grad`` of the weights are restored afterwards.
    """
    check_calibration_size(calibration_loader, n_samples, method)
    dtype = resolve_dtype(dtype)
    names = list(layers)
    key_options = {
        "dtype": dtype_name(dtype),
        "train_mode": bool(train_mode),
        "n_samples": n_samples,
        "batch_size": getattr(calibration_loader, "batch_size", None),  # the loss is a per-batch mean
        "layers": [[name, list(layers[name].weight.shape)] for name in names],
    }
    path, key = cache_file_for(context, "lora_ga_gradients", key_options) if cache else (None, None)
    cached = load_cache(path, key)
    if cached is not None:
        log.info("calibration gradients loaded from cache %s", path)
        return CalibrationResult(
            {name: cached["grads"][name] for name in names}, cached["n_samples"], cached["n_batches"], "hit", str(path)
        )

    start = time.perf_counter()
    device = model_input_device(model)
    extras = forward_extras(model, need_logits=True)
    weights = {name: layers[name].weight for name in names}
    saved_grads = {name: weight.grad for name, weight in weights.items()}
    stats: dict[str, torch.Tensor] = {}
    n_batches = n_rows = 0
    with preserve_model_state(model), adapters_disabled(model):
        try:
            model.train(bool(train_mode))
            for param in model.parameters():
                param.requires_grad_(False)
            groups = layer_groups(names, layers_per_pass)
            for index, group in enumerate(groups):
                totals, counts = {}, {}
                handles = []
                n_batches = n_rows = 0
                try:
                    for name in group:
                        weight = weights[name]
                        weight.grad = None
                        totals[name] = torch.zeros(
                            weight.shape, dtype=dtype, device="cpu" if offload_to_cpu else weight.device
                        )
                        weight.requires_grad_(True)
                        handles.append(
                            weight.register_post_accumulate_grad_hook(_fold_into(totals[name], counts, name))
                        )
                    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
                    batches = iter_batches(calibration_loader, n_samples, device, keys, method)
                    desc = f"{method} gradients" + (f" pass {index + 1}/{len(groups)}" if len(groups) > 1 else "")
                    total = expected_batches(calibration_loader, n_samples)
                    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
                        if "labels" not in batch:
                            raise ValueError(f"{method} needs 'labels' in the calibration batches to compute a loss")
                        with torch.enable_grad():
                            output = model(**batch, **extras)
                            loss = output["loss"] if isinstance(output, Mapping) else output.loss
                            if loss is None:
                                raise ValueError(f"{method}: the model returned no loss for a calibration batch")
                            loss.backward()
                        n_batches += 1
                        n_rows += batch["input_ids"].shape[0]
                finally:
                    for handle in handles:
                        handle.remove()
                    for name in group:
                        weights[name].requires_grad_(False)
                        weights[name].grad = None
                starved = [name for name in group if counts.get(name, 0) != n_batches]
                if starved:
                    raise RuntimeError(
                        f"{method}: no gradient reached layers {starved[:5]} on some batches (reentrant gradient "
                        "checkpointing without input grads? a layer unused by the loss?)"
                    )
                # On N ranks (each ran its share of the batches): the sums and counts of all batches.
                distributed.all_reduce_sums([totals[name] for name in group])
                n_batches = distributed.all_reduce_count(n_batches, device)
                n_rows = distributed.all_reduce_count(n_rows, device)
                for name in group:
                    mean = totals.pop(name).div_(n_batches)
                    check_finite(name, mean, "calibration gradients")
                    stats[name] = mean
        finally:
            for name, weight in weights.items():
                weight.grad = saved_grads[name]
    status = "off"
    if path is not None:
        if distributed.is_writer():  # every rank holds the same gradients; one writes them
            payload = {"grads": {n: g.cpu() for n, g in stats.items()}, "n_samples": n_rows, "n_batches": n_batches}
            save_cache(path, key, payload)
        status = "miss"
    return CalibrationResult(stats, n_rows, n_batches, status, str(path) if path else None, time.perf_counter() - start)
