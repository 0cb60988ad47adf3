"""One calibration pass: forward hooks on the target layers feed each batch's outputs (or the inputs a group of
layers shares) into their accumulators (:mod:`astra.calibration.moment_accumulation`).

The hooks never read tensor values on the host (no ``.item()``, no branching on values): they only look at
shapes and tensor identity, so a GPU pass runs without host synchronisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from astra.calibration.common import expected_batches, iter_batches
from astra.calibration.moment_accumulation import Accumulator, MomentOptions, decide_group, initial_route


@dataclass
class _Member:
    """One layer's call waiting in a group that reads one input tensor."""

    name: str
    route: str | None  # None: decided when the group is folded (auto, first call)
    d_out: int
    inv_scale: torch.Tensor | None  # [B] 1/c_n, or None (normalize none)
    y: torch.Tensor | None  # [B, P, d_out] kept only while the route is undecided


class PassState:
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

    def accumulator(self, name: str, dim: int, device: torch.device) -> Accumulator:
        if name not in self.accs:
            self.accs[name] = Accumulator(dim, device, self.options.dtype)
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
            route = decide_group(group, dim, positions, options)
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


def _make_hook(name: str, state: PassState):
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


def run_pass(model, loader, layers, group, options, n_samples, progress, desc, extras, device, method):
    accs: dict[str, Accumulator] = {}
    routes = {name: initial_route(layers[name], options) for name in group}
    sources: dict[str, str] = {}
    bias = {name: getattr(layers[name], "bias", None) is not None for name in group}
    state = PassState(options, accs, routes, sources, bias)
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
