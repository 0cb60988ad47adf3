"""LoRA-GA: LoRA initialised from the SVD of the averaged full-weight gradient (Wang, Yu & Li, arXiv 2407.05000).

The published algorithm as the authors' code runs it (github.com/Outsider565/LoRA-GA, ``lora_ga_init`` with its
defaults ``direction="ArB2r"``, ``scale="stable"``, ``stable_gamma=16``): G = the gradient of the loss w.r.t.
the base weight W (d_out x d_in) averaged over a few calibration batches; ``U, S, V = svd_lowrank(G, q=4r,
niter=4)``; A = V[:, :r]^T (top-r right singular vectors), B = U[:, r:2r] (left singular vectors r..2r), both
multiplied by d_out^(1/4) / sqrt(gamma); the frozen weight becomes W - s * B @ A, so the output is unchanged at
initialisation. The authors' reproduction runs use rsLoRA scaling s = alpha / sqrt(r) (``peft.use_rslora=True``).

Why not PEFT's ``LoraGAConfig`` (peft >= 0.19): its ``lora_ga_init`` multiplies B by the gradient's singular
values (B = U[:, r:2r] diag(S[r:2r])) and applies the stable scale to B only, so its B is smaller than the
published one by the gradient's singular values (orders of magnitude) and A is not rescaled; that is a
different initialisation from the paper's and the authors' code, so it cannot serve as the LoRA-GA baseline.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn

from astra.calibration.common import check_calibration_size, dtype_name, lora_targets, resolve_dtype, stable_seed
from astra.calibration.gradients import collect_weight_gradients
from astra.methods.astra import write_adapter
from astra.methods.base import InitContext

log = logging.getLogger(__name__)


def lora_ga_factors(
    weight: torch.Tensor,
    grad: torch.Tensor,
    rank: int,
    scaling: float,
    *,
    gamma: float = 16,
    seed: int = 0,
    niter: int = 4,
    factor_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LoRA-GA's factors for one layer: ``(A, B, residual)``.

    ``svd_lowrank(grad, q=min(4r, min(grad.shape)), niter)`` in float32 with a seeded RNG (bit-identical for the
    same seed on the same device); A = V[:, :r]^T * k, B = U[:, r:2r] * k with k = d_out^(1/4) / sqrt(gamma);
    residual = W - scaling * B @ A in float32, returned in the weight's dtype (A, B in ``factor_dtype``, default
    the weight's dtype; the residual uses the factors as stored).
    """
    if weight.dim() != 2 or tuple(grad.shape) != tuple(weight.shape):
        raise ValueError(f"grad shape {tuple(grad.shape)} must equal the 2-D weight shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if not isinstance(rank, int) or not 1 <= 2 * rank <= min(d_out, d_in):
        raise ValueError(
            f"rank={rank!r}: LoRA-GA needs 1 <= 2*rank <= min(d_out, d_in)={min(d_out, d_in)} (B uses singular vectors r..2r)"
        )
    if gamma <= 0:
        raise ValueError(f"gamma={gamma!r} must be positive")
    g = grad.detach().to(torch.float32)
    devices = (
        [g.device.index if g.device.index is not None else torch.cuda.current_device()]
        if g.device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        u, _, v = torch.svd_lowrank(g, q=min(4 * rank, min(g.shape)), niter=niter)
    scale = d_out**0.25 / math.sqrt(gamma)
    factor_dtype = factor_dtype or weight.dtype
    lora_a = (v[:, :rank].mT * scale).to(factor_dtype)
    lora_b = (u[:, rank : 2 * rank] * scale).to(factor_dtype)
    w = weight.detach().to(torch.float32)
    residual = (w - scaling * (lora_b.to(torch.float32) @ lora_a.to(torch.float32))).to(weight.dtype)
    return lora_a.contiguous(), lora_b.contiguous(), residual


def init_lora_ga(
    model: nn.Module,
    calibration_loader: torch.utils.data.DataLoader | None,
    context: InitContext,
    *,
    gamma: float = 16,
    niter: int = 4,
    dtype: Any = "float32",
    train_mode: bool = True,
    layers_per_pass: int | None = None,
    offload_to_cpu: bool = False,
    cache: bool = True,
    n_samples: int | None = None,
    progress: bool = True,
) -> dict:
    """Initialise every PEFT LoRA layer of ``model`` with LoRA-GA (in place); returns the init report.

    The gradient batches are the calibration loader's: n_samples rows in batches of its batch size.
    """
    check_calibration_size(calibration_loader, n_samples, "lora_ga")
    adapter = context.adapter_name
    targets = lora_targets(model, adapter)
    peft_config = getattr(model, "peft_config", {}).get(adapter)
    if peft_config is not None and not getattr(peft_config, "use_rslora", False):
        log.warning("lora_ga: use_rslora is false; the LoRA-GA authors' runs use rsLoRA scaling alpha/sqrt(r)")
    bases = {name: layer.get_base_layer() for name, layer in targets.items()}
    result = collect_weight_gradients(
        model,
        calibration_loader,
        bases,
        dtype=resolve_dtype(dtype),
        train_mode=train_mode,
        layers_per_pass=layers_per_pass,
        offload_to_cpu=offload_to_cpu,
        cache=cache,
        context=context,
        n_samples=n_samples,
        progress=progress,
    )
    start = time.perf_counter()
    grad_norms = {}
    for name, layer in targets.items():
        base = bases[name]
        grad = result.stats.pop(name).to(base.weight.device)
        grad_norms[name] = float(grad.norm())
        lora_a, lora_b, residual = lora_ga_factors(
            base.weight,
            grad,
            layer.r[adapter],
            layer.scaling[adapter],
            gamma=gamma,
            seed=stable_seed(context.seed, name),
            niter=niter,
            factor_dtype=layer.lora_A[adapter].weight.dtype,
        )
        write_adapter(layer, adapter, lora_a, lora_b, residual)
        del grad
    return {
        "method": "lora_ga",
        "gamma": gamma,
        "niter": niter,
        "dtype": dtype_name(resolve_dtype(dtype)),
        "train_mode": bool(train_mode),
        "use_rslora": bool(getattr(peft_config, "use_rslora", False)) if peft_config is not None else None,
        "n_layers": len(targets),
        **result.report(),
        "init_seconds": round(time.perf_counter() - start, 3),
        "grad_norm": grad_norms,
    }
