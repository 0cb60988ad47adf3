"""Per-sample normalised second moments of target layers' outputs (the statistic Astra decomposes).

For sample (row) n with outputs y_nt (t over the row's positions), token weights w_nt (1, or the attention mask
with ``mask_padding``) and normaliser c_n (``signed_max``: |max_{t,j} y_ntj| over the counted positions, the
reference code; ``abs_max``: max |y_ntj|; ``none``: 1), the moment over N samples is

    C = 1/N sum_n sum_t w_nt (y_nt / c_n)(y_nt / c_n)^T                                  (center=False)
    C = 1/N [sum_nt w_nt ỹ_nt ỹ_nt^T - (sum_nt w_nt ỹ_nt)(sum_nt w_nt ỹ_nt)^T / K]    (center=True, K = sum w)

i.e. the reference's sum over each sample's positions averaged over samples, and its centred version. It does
not depend on how rows are batched.

Where it is accumulated (``route``, per layer). For a linear layer y = W x + b, C = W̃ M W̃^T with W̃ = [W | b]
and M the same statistic of the augmented input [x; 1] (sample n weighted by 1/c_n^2), so a layer accumulates
either its output moment (``output``: d_out^2 multiply-adds per token) or its input moment (``input``: d_in^2).

Sharing (``share_inputs``). Layers that read one input tensor (LLaMA's q/k/v; gate/up) need
M_l = sum_n (1/c_ln^2) X_n^T X_n: the per-sample input moments X_n^T X_n are the same for all of them, only the
per-sample weights 1/c_ln^2 (from each layer's own output, which its hook sees) differ. So the group computes the
per-sample moments once per batch (a batched matmul [B, d, T] @ [B, T, d], in chunks of samples that bound
memory) and each layer folds them in with its own weights (a [B] x [B, d*d] product): d_in^2 per token for the
whole group instead of d^2 per layer. For a LLaMA block that is 4 d^2 per token (q/k/v input, o, gate/up input,
down output) instead of 7 d^2. With ``normalize: none`` the weights are all 1 and one Gram serves the group.
``auto`` routing decides per group, on the first batch, which side is cheaper; ``share_inputs: false`` keeps
the unshared per-layer route (input side only when d_in [+1] < d_out).

Modules: this one (the statistic, its cache, the distributed reduction); moment_accumulation (the options, the
routing, the running sums); moment_pass (the forward hooks of one pass, which never read a tensor value on the host).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from astra.calibration import distributed
from astra.calibration.common import (
    CalibrationResult,
    adapters_disabled,
    cache_file_for,
    check_all_finite,
    check_calibration_size,
    forward_extras,
    layer_groups,
    load_cache,
    model_input_device,
    preserve_model_state,
    save_cache,
    scalars_to_host,
)
from astra.calibration.moment_accumulation import MomentOptions, initial_route
from astra.calibration.moment_pass import run_pass

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = MomentOptions()  # the reference code's statistic (frozen, so one instance serves every call)


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
    source: str = ""  # input route: the first layer of the group that shared its per-sample input moments

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


def collect_output_moments(
    model: nn.Module,
    calibration_loader: Any,
    layers: Mapping[str, nn.Module],
    options: MomentOptions = DEFAULT_OPTIONS,
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
    off during calibration. Exactly ``n_samples`` rows are used when given (fewer is an error). Each layer's
    route (``LayerMoment.route``) is decided by ``options`` and, with ``auto``, by which layers read one input.
    """
    check_calibration_size(calibration_loader, n_samples, method)
    names = list(layers)
    for name in names:
        initial_route(layers[name], options)  # option errors before any work
    key_options = {
        **options.key(),
        "n_samples": n_samples,
        "route": options.route,
        "share_inputs": options.share_inputs,
        "layers_per_pass": layers_per_pass,  # changes which layers can share an input (the route, not the values)
        "layers": [[name, list(layers[name].weight.shape), layers[name].bias is not None] for name in names],
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
            accs, routes, sources, n_batches = run_pass(
                model, calibration_loader, layers, group, options, n_samples, progress, desc, extras, device, method
            )
            # On N ranks (each ran its share of the batches) the running sums become those of all batches.
            for acc in {id(a): a for a in accs.values()}.values():
                distributed.all_reduce_sums([*acc.rows, acc.su, acc.sv, acc.u0, acc.v0, acc.K])
                acc.N = distributed.all_reduce_count(acc.N, acc.K.device)
            n_batches = distributed.all_reduce_count(n_batches, device)
            matrices = {}
            for name in group:
                bias_row = routes[name] == "input" and layers[name].bias is not None
                matrices[name] = (accs[name].finalize(options.center, bias_row), bias_row)
            check_all_finite({name: matrix for name, (matrix, _) in matrices.items()}, "calibration moments")
            tokens = scalars_to_host([accs[name].K for name in group])  # one host read per pass
            for name, n_tokens in zip(group, tokens):
                matrix, bias_row = matrices.pop(name)
                if offload_to_cpu:
                    matrix = matrix.cpu()
                source = sources.get(name, name) if routes[name] == "input" else name
                stats[name] = LayerMoment(matrix, routes[name], bias_row, accs[name].N, n_tokens, source)
                del accs[name]
    n_rows = stats[names[0]].n_samples
    status = "off"
    if path is not None:
        if distributed.is_writer():  # every rank holds the same statistics; one writes them
            save_cache(path, key, {name: moment.to_payload() for name, moment in stats.items()})
        status = "miss"
    return CalibrationResult(stats, n_rows, n_batches, status, str(path) if path else None, time.perf_counter() - start)
