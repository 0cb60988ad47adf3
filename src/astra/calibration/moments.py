"""Per-sample normalised second moments of target layers' outputs (the statistic Astra decomposes).

For sample (row) n with outputs y_nt (t over the row's positions), token weights w_nt (1, or the attention mask
with ``mask_padding``) and normaliser c_n (``signed_max``: |max_{t,j} y_ntj| over the counted positions, the
reference code; ``abs_max``: max |y_ntj|; ``none``: 1), the moment over N samples is

    C = 1/N sum_n sum_t w_nt (y_nt / c_n)(y_nt / c_n)^T                                  (center=False)
    C = 1/N [sum_nt w_nt ỹ_nt ỹ_nt^T - (sum_nt w_nt ỹ_nt)(sum_nt w_nt ỹ_nt)^T / K]    (center=True, K = sum w)

i.e. the reference's sum over each sample's positions averaged over samples, and its centred version. It does
not depend on how rows are batched. For a linear layer y = W x + b, C = W̃ M W̃^T with W̃ = [W | b] and M the
same statistic of the augmented input [x; 1] (weighted by w/c_n^2), so a layer can accumulate on whichever
side is smaller (``route``): d_out^2 or (d_in+1)^2 multiply-adds per token. The normaliser needs max(Y), which
the hook sees anyway. Layers reading the same input tensor (q/k/v, gate/up) share one input accumulator when
the weights do not depend on the layer (``normalize="none"``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

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

NORMALIZE = ("signed_max", "abs_max", "none")
ROUTES = ("auto", "output", "input")


@dataclass(frozen=True)
class MomentOptions:
    normalize: str = "signed_max"  # reference: Y / |max(Y)| per sample
    center: bool = False  # reference: un-centred; the paper's equation: centred
    mask_padding: bool = False  # reference: padding positions counted
    dtype: Any = "float32"  # accumulation dtype (float32 or float64), whatever the model dtype
    route: str = "auto"  # auto: the smaller side per layer; output / input: force a side
    share_inputs: bool = True  # share input accumulators between layers reading the same tensor (normalize=none)

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize={self.normalize!r} is not one of {NORMALIZE}")
        if self.route not in ROUTES:
            raise ValueError(f"route={self.route!r} is not one of {ROUTES}")
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype))
        object.__setattr__(self, "center", bool(self.center))
        object.__setattr__(self, "mask_padding", bool(self.mask_padding))

    def key(self) -> dict:
        """The options that change the statistics (part of the cache key)."""
        return {
            "normalize": self.normalize,
            "center": self.center,
            "mask_padding": self.mask_padding,
            "dtype": dtype_name(self.dtype),
        }


@dataclass
class FactoredMoment:
    """An output moment in factored form ``C = F M F^T``: F = [W | b] (d_out x k), M (k x k) positive semidefinite."""

    weight: torch.Tensor
    inner: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.weight.shape[0], self.weight.shape[0])

    def dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.inner.dtype
        weight = self.weight.to(dtype)
        moment = weight @ self.inner.to(dtype) @ weight.mT
        return (moment + moment.mT) / 2


@dataclass
class LayerMoment:
    """One layer's statistic: the output moment (route ``output``) or the input moment M (route ``input``)."""

    matrix: torch.Tensor
    route: str
    bias_row: bool  # input route: M is augmented with the bias coordinate (last row/column)
    n_samples: int
    n_tokens: float
    source: str = ""  # the layer whose accumulator produced it (another layer when the input was shared)

    def for_layer(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | FactoredMoment:
        """The output moment for ``astra_factors``: a dense matrix, or a :class:`FactoredMoment` (input route)."""
        if self.route == "output":
            return self.matrix
        factor = weight.detach()
        if self.bias_row:
            if bias is None:
                raise ValueError("this input moment was accumulated for a layer with a bias")
            factor = torch.cat([factor, bias.detach()[:, None]], dim=1)
        return FactoredMoment(weight=factor.to(device=self.matrix.device), inner=self.matrix)

    def dense(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The d_out x d_out output moment, materialised."""
        moment = self.for_layer(weight, bias) if self.route == "input" else self.matrix
        return moment.dense(self.matrix.dtype) if isinstance(moment, FactoredMoment) else moment

    def to_payload(self) -> dict:
        return {
            "matrix": self.matrix.cpu(),
            "route": self.route,
            "bias_row": self.bias_row,
            "n_samples": self.n_samples,
            "n_tokens": self.n_tokens,
            "source": self.source,
        }

    @classmethod
    def from_payload(cls, payload: dict) -> LayerMoment:
        return cls(**payload)


def choose_route(module: nn.Module, route: str) -> str:
    """``auto``: accumulate on the input side when (d_in [+1 for a bias]) < d_out, else on the output side."""
    if route == "output":
        return "output"
    is_linear = isinstance(module, nn.Linear)
    if route == "input":
        if not is_linear:
            raise ValueError(f"route='input' needs an nn.Linear layer, got {type(module).__name__}")
        return "input"
    if not is_linear:
        return "output"
    d_out, d_in = module.weight.shape
    return "input" if d_in + (module.bias is not None) < d_out else "output"


class _Accumulator:
    """Running sums over tokens of z (the layer's output or input) weighted by v = w / c_n per token.

    S = sum v^2 z z^T, su = sum v^2 z, u0 = sum v^2 (bias augmentation), sv = sum v z, v0 = sum v (centring),
    K = sum w (counted tokens), N = rows.
    """

    def __init__(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        zeros = functools.partial(torch.zeros, device=device, dtype=dtype)
        self.S = zeros(dim, dim)
        self.su, self.sv = zeros(dim), zeros(dim)
        self.u0, self.v0, self.K = zeros(()), zeros(()), zeros(())
        self.N = 0

    def add(self, z: torch.Tensor, v: torch.Tensor, w_sum: Any, rows: int) -> None:
        # z: [tokens, dim] (a fresh copy in the accumulation dtype), v: [tokens]
        v0 = v.sum()
        zs = z.mul_(v[:, None])
        self.S.addmm_(zs.mT, zs)
        self.su.addmv_(zs.mT, v)
        self.sv.add_(zs.sum(0))
        self.u0.add_(v.square().sum())
        self.v0.add_(v0)
        self.K.add_(w_sum)
        self.N += rows

    def finalize(self, center: bool, bias_row: bool) -> torch.Tensor:
        dim = self.S.shape[0]
        if bias_row:
            moment = self.S.new_empty(dim + 1, dim + 1)
            moment[:dim, :dim] = self.S
            moment[:dim, dim] = self.su
            moment[dim, :dim] = self.su
            moment[dim, dim] = self.u0
            first = torch.cat([self.sv, self.v0[None]])
        else:
            moment = self.S.clone()
            first = self.sv
        if center:
            moment.sub_(torch.outer(first, first) / self.K)
        moment.div_(self.N)
        return (moment + moment.mT) / 2


class _PassState:
    """What the hooks need to know about the current batch."""

    def __init__(self) -> None:
        self.rows = 0
        self.mask: torch.Tensor | None = None  # bool [B, T]
        self.first_batch = True
        self.last_input: tuple[torch.Tensor, str] | None = None

    def begin(self, batch: dict) -> None:
        self.rows = batch["input_ids"].shape[0]
        mask = batch.get("attention_mask")
        self.mask = mask.bool() if mask is not None else torch.ones_like(batch["input_ids"], dtype=torch.bool)
        self.last_input = None

    def end(self) -> None:
        self.mask = None
        self.last_input = None


def _per_row(name: str, t: torch.Tensor, rows: int, mask: torch.Tensor) -> torch.Tensor:
    """View a hooked tensor [..., d] as [rows, positions, d]: every leading dimension is flattened."""
    dim = t.shape[-1]
    if t.dim() >= 2 and t.shape[0] == rows:
        return t.reshape(rows, -1, dim)
    if t.dim() == 2 and t.shape[0] == mask.numel():  # tokens flattened to [B*T, d]
        return t.reshape(rows, -1, dim)
    raise RuntimeError(f"cannot split layer {name!r}'s tensor of shape {tuple(t.shape)} into the batch's {rows} rows")


def _token_weights(name: str, y: torch.Tensor, mask: torch.Tensor, mask_padding: bool) -> torch.Tensor | None:
    """Bool [rows, positions] of counted positions, or None when every position counts."""
    if not mask_padding:
        return None
    if y.shape[1] == mask.shape[1]:
        return mask
    if y.shape[1] == 1:  # a pooled output: one position per sample
        return None
    raise RuntimeError(
        f"mask_padding: layer {name!r} has {y.shape[1]} positions per row but the attention mask has {mask.shape[1]}"
    )


def _row_scales(
    y: torch.Tensor, counted: torch.Tensor | None, normalize: str, dtype: torch.dtype
) -> torch.Tensor | None:
    """1 / c_n per row (c_n: the per-sample normaliser over the counted positions), or None for ``none``."""
    if normalize == "none":
        return None
    if normalize == "signed_max":
        values = y if counted is None else y.masked_fill(~counted[..., None], float("-inf"))
        scale = values.amax(dim=(1, 2)).abs()
    else:
        values = y.abs() if counted is None else y.abs().masked_fill(~counted[..., None], 0)
        scale = values.amax(dim=(1, 2))
    return scale.to(dtype).reciprocal()


def _make_hook(name: str, route: str, options: MomentOptions, state: _PassState, accs: dict, owner: dict):
    share = route == "input" and options.normalize == "none" and options.share_inputs
    dtype = options.dtype

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        x = None
        if route == "input":
            x = args[0] if args else kwargs["input"]
        if share:
            last = state.last_input
            shared = last is not None and last[0] is x
            if state.first_batch:
                if shared:
                    owner[name] = last[1]
                    return
                owner[name] = name
            elif owner[name] != name:
                if not (shared and last[1] == owner[name]):
                    raise RuntimeError(
                        f"layer {name!r} read the same input as {owner[name]!r} on the first calibration batch but "
                        "not later; set share_inputs: false"
                    )
                return
            state.last_input = (x, name)
        else:
            owner[name] = name

        y = output if isinstance(output, torch.Tensor) else output[0]
        y = _per_row(name, y.detach(), state.rows, state.mask)
        counted = _token_weights(name, y, state.mask, options.mask_padding)
        inv_scale = _row_scales(y, counted, options.normalize, dtype)
        rows, positions = y.shape[0], y.shape[1]
        if counted is None:
            v = torch.ones(rows, positions, device=y.device, dtype=dtype)
            w_sum: Any = float(rows * positions)  # a Python number: no host-to-device copy
        else:
            v = counted.to(dtype)
            w_sum = v.sum()
        if inv_scale is not None:
            v = v * inv_scale[:, None]
        source = y if x is None else _per_row(name, x.detach(), state.rows, state.mask)
        z = source.reshape(rows * positions, source.shape[-1]).to(dtype=dtype, copy=True)
        if name not in accs:
            accs[name] = _Accumulator(z.shape[-1], z.device, dtype)
        accs[name].add(z, v.reshape(-1), w_sum, rows)

    return hook


def _run_pass(model, loader, layers, group, routes, options, n_samples, progress, desc, extras, device, method):
    state = _PassState()
    accs: dict[str, _Accumulator] = {}
    owner: dict[str, str] = {}
    handles = []
    n_batches = 0
    try:
        for name in group:
            hook = _make_hook(name, routes[name], options, state, accs, owner)
            handles.append(layers[name].register_forward_hook(hook, with_kwargs=True))
        batches = iter_batches(loader, n_samples, device, ("input_ids", "attention_mask"), method)
        for batch in tqdm(
            batches, total=expected_batches(loader, n_samples), desc=desc, disable=not progress, leave=False
        ):
            state.begin(batch)
            model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), **extras)
            state.end()
            state.first_batch = False
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        state.end()
    missing = [name for name in group if name not in owner]
    if missing:
        raise RuntimeError(f"layers never called during calibration: {missing}")
    return accs, owner, n_batches


def collect_output_moments(
    model: nn.Module,
    calibration_loader: Any,
    layers: Mapping[str, nn.Module],
    options: MomentOptions = MomentOptions(),
    *,
    layers_per_pass: int | None = None,
    offload_to_cpu: bool = False,
    cache: bool = True,
    context: Any = None,
    n_samples: int | None = None,
    progress: bool = True,
    method: str = "astra",
) -> CalibrationResult:
    """Run the calibration data through the frozen model and return ``{name: LayerMoment}`` for ``layers``.

    ``layers`` maps names to the modules to hook (for PEFT, the LoRA layers' base layers); adapters are switched
    off during calibration. Exactly ``n_samples`` rows are used when given (fewer is an error).
    """
    check_calibration_size(calibration_loader, n_samples, method)
    names = list(layers)
    routes = {name: choose_route(layers[name], options.route) for name in names}
    key_options = {
        **options.key(),
        "n_samples": n_samples,
        "layers": [
            [name, list(layers[name].weight.shape), layers[name].bias is not None, routes[name]] for name in names
        ],
    }
    path, key = cache_file_for(context, "astra_moments", key_options) if cache else (None, None)
    cached = load_cache(path, key)
    if cached is not None:
        log.info("calibration statistics loaded from cache %s", path)
        stats = {name: LayerMoment.from_payload(cached[name]) for name in names}
        first = stats[names[0]]
        return CalibrationResult(stats, first.n_samples, 0, "hit", str(path))

    start = time.perf_counter()
    device = model_input_device(model)
    extras = forward_extras(model, need_logits=False)
    groups = layer_groups(names, layers_per_pass)
    stats: dict[str, LayerMoment] = {}
    n_batches = 0
    with preserve_model_state(model), adapters_disabled(model), torch.no_grad():
        model.eval()
        for index, group in enumerate(groups):
            desc = f"{method} calibration" + (f" pass {index + 1}/{len(groups)}" if len(groups) > 1 else "")
            accs, owner, n_batches = _run_pass(
                model,
                calibration_loader,
                layers,
                group,
                routes,
                options,
                n_samples,
                progress,
                desc,
                extras,
                device,
                method,
            )
            for name in group:
                acc = accs[owner[name]]
                bias_row = routes[name] == "input" and layers[name].bias is not None
                matrix = acc.finalize(options.center, bias_row)
                check_finite(name, matrix, "calibration moments")
                if offload_to_cpu:
                    matrix = matrix.cpu()
                stats[name] = LayerMoment(matrix, routes[name], bias_row, acc.N, float(acc.K), owner[name])
            del accs
    n_rows = stats[names[0]].n_samples
    status = "off"
    if path is not None:
        save_cache(path, key, {name: moment.to_payload() for name, moment in stats.items()})
        status = "miss"
    return CalibrationResult(stats, n_rows, n_batches, status, str(path) if path else None, time.perf_counter() - start)
