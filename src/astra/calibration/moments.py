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

The hooks never read tensor values on the host (no ``.item()``, no branching on values): they only look at
shapes and tensor identity, so a GPU pass runs without host synchronisation.
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

from astra.calibration import distributed
from astra.calibration.common import (
    CalibrationResult,
    adapters_disabled,
    cache_file_for,
    check_all_finite,
    check_calibration_size,
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
    scalars_to_host,
)

log = logging.getLogger(__name__)

NORMALIZE = ("signed_max", "abs_max", "none")
ROUTES = ("auto", "output", "input")
SHARE = ("auto", True, False)
SAMPLE_CHUNK_BYTES = 1 << 30  # per-sample input moments held at once by a shared group (B x d_in^2 floats)


@dataclass(frozen=True)
class MomentOptions:
    normalize: str = "signed_max"  # reference: Y / |max(Y)| per sample
    center: bool = False  # reference: un-centred; the paper's equation: centred
    mask_padding: bool = False  # reference: padding positions counted
    dtype: Any = "float32"  # accumulation dtype (float32 or float64), whatever the model dtype
    route: str = "auto"  # auto: the cheaper side per layer / shared group; output / input: force a side
    share_inputs: Any = "auto"  # auto: share input moments when it pays; True: whenever possible; False: never
    sample_chunk_bytes: int = SAMPLE_CHUNK_BYTES  # memory bound of a shared group's per-sample moments

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize={self.normalize!r} is not one of {NORMALIZE}")
        if self.route not in ROUTES:
            raise ValueError(f"route={self.route!r} is not one of {ROUTES}")
        if not (isinstance(self.share_inputs, bool) or self.share_inputs == "auto"):
            raise ValueError(f"share_inputs={self.share_inputs!r} is not one of {SHARE}")
        if int(self.sample_chunk_bytes) < 1:
            raise ValueError(f"sample_chunk_bytes={self.sample_chunk_bytes} must be positive")
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


# --------------------------------------------------------------------------------------------- routing


def _input_dim(module: nn.Module) -> int:
    return module.weight.shape[1] + (module.bias is not None)


def initial_route(module: nn.Module, options: MomentOptions) -> str | None:
    """``output`` / ``input``, or None: ``auto`` decides when the layer's first call shows who shares its input.

    A layer whose augmented input is smaller than its output (d_in [+1] < d_out) accumulates on the input side
    even alone; with ``share_inputs: false`` every other layer accumulates on the output side (the unshared
    route). The rest wait for :func:`_decide_group`.
    """
    is_linear = isinstance(module, nn.Linear)
    if options.route == "input" and not is_linear:
        raise ValueError(f"route='input' needs an nn.Linear layer, got {type(module).__name__}")
    if options.route != "auto":
        return options.route
    if not is_linear:
        return "output"
    if _input_dim(module) < module.weight.shape[0]:
        return "input"
    return "output" if options.share_inputs is False else None


def _input_side_cost(dim: int, members: int, positions: int, shared: bool) -> float:
    """Multiply-adds per token of input-side accumulation for ``members`` layers reading one [.., dim] input."""
    if members == 0:
        return 0.0
    if not shared or members == 1:
        return float(members * dim * dim)
    return dim * dim * (1.0 + members / positions)  # per-sample moments once + one [B] x [B, d^2] fold per layer


def _decide_group(members: list, dim: int, positions: int, options: MomentOptions) -> str:
    """Route for the undecided layers of a group reading one input: all ``input`` or all ``output``."""
    undecided = [m for m in members if m.route is None]
    decided_input = len(members) - len(undecided)
    if options.share_inputs is True:
        return "input" if len(members) >= 2 else "output"
    output_cost = sum(m.d_out**2 for m in undecided) + _input_side_cost(dim, decided_input, positions, True)
    input_cost = _input_side_cost(dim, len(members), positions, True)
    return "input" if input_cost < output_cost else "output"


# --------------------------------------------------------------------------------------------- accumulation


GRAM_BLOCK = 128  # narrowest block of the block-upper-triangular Gram (below it, GEMMs lose efficiency)
GRAM_MAX_BLOCKS = 8


def gram_blocks(dim: int) -> list[tuple[int, int]]:
    """Column ranges of the block rows in which a symmetric d x d Gram is accumulated.

    Only the block-upper triangle is computed (block row i: columns from its own start to d), (k+1)/2k of the
    multiply-adds of a full Gram for k blocks: 7/12 for k = 6 (d = 768), 9/16 for k = 8 (d >= 1024).
    """
    count = max(1, min(GRAM_MAX_BLOCKS, dim // GRAM_BLOCK))
    edges = [round(i * dim / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


class _Accumulator:
    """Running sums over tokens of z (the layer's output or input) weighted by v = w / c_n per token.

    S = sum v^2 z z^T (kept as the block rows of its upper triangle, see :func:`gram_blocks`), su = sum v^2 z,
    u0 = sum v^2 (bias augmentation), sv = sum v z, v0 = sum v (centring), K = sum w (counted tokens), N = rows.
    Everything stays on the device (no host reads while accumulating).
    """

    def __init__(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        zeros = functools.partial(torch.zeros, device=device, dtype=dtype)
        self.dim = dim
        self.blocks = gram_blocks(dim)
        self.rows = [zeros(stop - begin, dim - begin) for begin, stop in self.blocks]  # S[begin:stop, begin:]
        self.su, self.sv = zeros(dim), zeros(dim)
        self.u0, self.v0, self.K = zeros(()), zeros(()), zeros(())
        self.N = 0

    def add_gram(self, z: torch.Tensor) -> None:
        """S += z^T z for z [tokens, dim]."""
        for (begin, stop), row in zip(self.blocks, self.rows):
            row.addmm_(z[:, begin:stop].mT, z[:, begin:])

    def add_tokens(self, z: torch.Tensor, v: torch.Tensor | None, w_sum: Any, rows: int, bias_terms: bool) -> None:
        """z: [tokens, dim] (a fresh copy in the accumulation dtype, scaled in place), v: [tokens] or None (all 1)."""
        if v is None:
            self.add_gram(z)
            column = z.sum(0)
            self.sv.add_(column)
            if bias_terms:
                self.su.add_(column)
                self.u0.add_(w_sum)
            self.v0.add_(w_sum)
        else:
            zs = z.mul_(v[:, None])
            self.add_gram(zs)
            if bias_terms:
                self.su.addmv_(zs.mT, v)
                self.u0.add_(v.square().sum())
            self.sv.add_(zs.sum(0))
            self.v0.add_(v.sum())
        self.K.add_(w_sum)
        self.N += rows

    def square(self, out: torch.Tensor) -> torch.Tensor:
        """Write the full S into ``out`` (dim x dim), exactly symmetric: the block rows, their mirror images, and
        the diagonal blocks symmetrised (a GEMM's z^T z is symmetric only up to rounding)."""
        for (begin, stop), row in zip(self.blocks, self.rows):
            diagonal = row[:, : stop - begin]
            torch.add(diagonal, diagonal.mT, out=out[begin:stop, begin:stop]).mul_(0.5)
            out[begin:stop, stop:] = row[:, stop - begin :]
            out[stop:, begin:stop] = row[:, stop - begin :].mT
        return out

    def finalize(self, center: bool, bias_row: bool) -> torch.Tensor:
        dim = self.dim
        if bias_row:
            moment = self.su.new_empty(dim + 1, dim + 1)
            self.square(moment[:dim, :dim])
            moment[:dim, dim] = self.su
            moment[dim, :dim] = self.su
            moment[dim, dim] = self.u0
            first = torch.cat([self.sv, self.v0[None]])
        else:
            moment = self.square(self.su.new_empty(dim, dim))
            first = self.sv
        self.rows = []  # free the block rows
        if center:
            moment.sub_(torch.outer(first, first).div_(self.K))  # f_i f_j == f_j f_i: still exactly symmetric
        return moment.div_(self.N)


@dataclass
class _Member:
    """One layer's call waiting in a group that reads one input tensor."""

    name: str
    route: str | None  # None: decided when the group is folded (auto, first call)
    d_out: int
    inv_scale: torch.Tensor | None  # [B] 1/c_n, or None (normalize none)
    y: torch.Tensor | None  # [B, P, d_out] kept only while the route is undecided


class _PassState:
    """What the hooks need to know about the current batch, and the group of calls reading one input."""

    def __init__(self, options: MomentOptions, accs: dict, routes: dict, sources: dict, bias: dict) -> None:
        self.options = options
        self.accs, self.routes, self.sources, self.bias = accs, routes, sources, bias
        self.rows = 0
        self.mask: torch.Tensor | None = None  # bool [B, T]
        self.group_input: torch.Tensor | None = None  # the tensor the pending group reads
        self.group_rows: torch.Tensor | None = None  # it, as [B, P, d_in]
        self.group_counted: torch.Tensor | None = None  # bool [B, P] or None
        self.group: list[_Member] = []
        self.called: set[str] = set()

    def begin(self, batch: dict) -> None:
        self.rows = batch["input_ids"].shape[0]
        mask = batch.get("attention_mask")
        self.mask = mask.bool() if mask is not None else torch.ones_like(batch["input_ids"], dtype=torch.bool)
        self._clear_group()

    def end(self) -> None:
        self.mask = None
        self._clear_group()

    def _clear_group(self) -> None:
        self.group_input = self.group_rows = self.group_counted = None
        self.group = []

    def accumulator(self, name: str, dim: int, device: torch.device) -> _Accumulator:
        if name not in self.accs:
            self.accs[name] = _Accumulator(dim, device, self.options.dtype)
        return self.accs[name]

    # ------------------------------------------------------------------------------------------ output side

    def add_output(self, name: str, y: torch.Tensor, counted: torch.Tensor | None, inv_scale: torch.Tensor | None):
        rows, positions, dim = y.shape
        z = y.reshape(rows * positions, dim).to(dtype=self.options.dtype, copy=True)
        v, w_sum = _token_scales(counted, inv_scale, rows, positions, self.options.dtype)
        self.accumulator(name, dim, z.device).add_tokens(z, v, w_sum, rows, bias_terms=False)

    # ------------------------------------------------------------------------------------------ input side

    def join(self, x: torch.Tensor, x_rows: torch.Tensor, counted: torch.Tensor | None, member: _Member) -> None:
        """Add a layer call to the pending group, folding the previous group first if it read another tensor."""
        if self.group_input is not x:
            self.fold()
            self.group_input, self.group_rows, self.group_counted = x, x_rows, counted
        self.group.append(member)

    def fold(self) -> None:
        """Fold the pending group's input moments into its members' accumulators (and decide undecided routes)."""
        group, x = self.group, self.group_rows
        if not group:
            self._clear_group()
            return
        counted = self.group_counted
        rows, positions, dim = x.shape
        options = self.options
        if any(member.route is None for member in group):
            route = _decide_group(group, dim, positions, options)
            for member in group:
                if member.route is None:
                    self.routes[member.name] = member.route = route
        source = group[0].name
        outputs = [m for m in group if m.route == "output"]
        inputs = [m for m in group if m.route == "input"]
        for member in outputs:
            self.add_output(member.name, member.y, counted, member.inv_scale)
        names = list(dict.fromkeys(m.name for m in inputs))
        shares = options.share_inputs is not False and len(names) > 1
        for name in names:
            self.sources.setdefault(name, source if shares else name)
        if inputs:
            self._fold_inputs(x, counted, inputs)
        self._clear_group()

    def _fold_inputs(self, x: torch.Tensor, counted: torch.Tensor | None, members: list[_Member]) -> None:
        options, dtype = self.options, self.options.dtype
        rows, positions, dim = x.shape
        accs = [self.accumulator(m.name, dim, x.device) for m in members]
        n_members = len(members)
        per_sample_pays = options.normalize == "none" or positions + n_members < n_members * positions
        if options.share_inputs is False or n_members == 1 or not per_sample_pays:
            # one layer (or too few positions to gain): its own weighted Gram, as the unshared route
            for member, acc in zip(members, accs):
                z = x.reshape(rows * positions, dim).to(dtype=dtype, copy=True)
                v, w_sum = _token_scales(counted, member.inv_scale, rows, positions, dtype)
                acc.add_tokens(z, v, w_sum, rows, bias_terms=self.bias[member.name])
            return
        xs = x.to(dtype=dtype, copy=counted is not None)
        if counted is not None:
            xs.mul_(counted[..., None])
            count = counted.sum(1).to(dtype)  # [B] counted positions per sample
        else:
            count = torch.full((rows,), float(positions), dtype=dtype, device=x.device)
        first = xs.sum(1)  # [B, d] per-sample first moments
        total = count.sum()
        if options.normalize == "none":  # every weight is 1: one Gram for the whole group
            flat = xs.reshape(rows * positions, dim)
            for block, (begin, stop) in enumerate(accs[0].blocks):
                gram = flat[:, begin:stop].mT @ flat[:, begin:]
                for acc in accs:
                    acc.rows[block].add_(gram)
                del gram
            column = first.sum(0)
            for acc in accs:
                acc.su.add_(column)
                acc.sv.add_(column)
                acc.u0.add_(total)
                acc.v0.add_(total)
                acc.K.add_(total)
                acc.N += rows
            return
        scales = torch.stack([m.inv_scale for m in members])  # [L, B]: 1/c_ln
        squares = scales.square()
        blocks = accs[0].blocks
        widest = max((stop - begin) * (dim - begin) for begin, stop in blocks)
        chunk = max(1, int(options.sample_chunk_bytes) // (widest * xs.element_size()))
        for start in range(0, rows, chunk):
            part = xs[start : start + chunk]
            weights = squares[:, start : start + chunk]
            for block, (begin, stop) in enumerate(blocks):
                # [b, w, d - begin]: block row of the per-sample moments X_n^T X_n, folded with each layer's weights
                moments = torch.bmm(part[..., begin:stop].mT, part[..., begin:]).reshape(part.shape[0], -1)
                for index, acc in enumerate(accs):
                    acc.rows[block].view(-1).addmv_(moments.mT, weights[index])
                del moments
        for index, acc in enumerate(accs):
            acc.su.addmv_(first.mT, squares[index])
            acc.u0.add_(squares[index] @ count)
            acc.sv.addmv_(first.mT, scales[index])
            acc.v0.add_(scales[index] @ count)
            acc.K.add_(total)
            acc.N += rows


def _token_scales(counted, inv_scale, rows: int, positions: int, dtype: torch.dtype):
    """Per-token weights v = w / c_n ([tokens], or None when all are 1) and the counted-token total."""
    if counted is None:
        w_sum: Any = float(rows * positions)  # a Python number: no host-to-device copy
        if inv_scale is None:
            return None, w_sum
        v = inv_scale[:, None].expand(rows, positions)
    else:
        v = counted.to(dtype)
        w_sum = v.sum()
        if inv_scale is not None:
            v = v * inv_scale[:, None]
    return v.reshape(-1), w_sum


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


def _make_hook(name: str, state: _PassState):
    options = state.options

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state.called.add(name)
        y = output if isinstance(output, torch.Tensor) else output[0]
        y = _per_row(name, y.detach(), state.rows, state.mask)
        counted = _token_weights(name, y, state.mask, options.mask_padding)
        inv_scale = _row_scales(y, counted, options.normalize, options.dtype)
        route = state.routes[name]
        if route == "output":
            state.add_output(name, y, counted, inv_scale)
            return
        x = args[0] if args else kwargs["input"]
        x_rows = _per_row(name, x.detach(), state.rows, state.mask)
        member = _Member(name, route, y.shape[-1], inv_scale, y if route is None else None)
        state.join(x, x_rows, counted, member)

    return hook


def _run_pass(model, loader, layers, group, options, n_samples, progress, desc, extras, device, method):
    accs: dict[str, _Accumulator] = {}
    routes = {name: initial_route(layers[name], options) for name in group}
    sources: dict[str, str] = {}
    bias = {name: getattr(layers[name], "bias", None) is not None for name in group}
    state = _PassState(options, accs, routes, sources, bias)
    handles = []
    n_batches = 0
    try:
        for name in group:
            handles.append(layers[name].register_forward_hook(_make_hook(name, state), with_kwargs=True))
        # token_type_ids: BERT-style pairs (GLUE) must be calibrated on the segments they train with.
        batches = iter_batches(loader, n_samples, device, ("input_ids", "attention_mask", "token_type_ids"), method)
        for batch in tqdm(
            batches, total=expected_batches(loader, n_samples), desc=desc, disable=not progress, leave=False
        ):
            state.begin(batch)
            model(**batch, **extras)
            state.fold()
            state.end()
            n_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        state.end()
    missing = [name for name in group if name not in state.called]
    if missing:
        raise RuntimeError(f"layers never called during calibration: {missing}")
    return accs, routes, sources, n_batches


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
            accs, routes, sources, n_batches = _run_pass(
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
