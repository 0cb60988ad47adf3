"""How a layer's calibration moment is accumulated: the options (:class:`MomentOptions`), the side each layer
accumulates on (routing: its output, or its input shared with the layers that read the same tensor) and the running
sums (:class:`Accumulator`, block-upper-triangular Grams). The statistic itself and why the input side gives the
same moment: :mod:`astra.calibration.moments`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from astra.calibration.common import dtype_name, resolve_dtype

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


# --------------------------------------------------------------------------------------------- routing


def _input_dim(module: nn.Module) -> int:
    return module.weight.shape[1] + (module.bias is not None)


def initial_route(module: nn.Module, options: MomentOptions) -> str | None:
    """``output`` / ``input``, or None: ``auto`` decides when the layer's first call shows who shares its input.

    A layer whose augmented input is smaller than its output (d_in [+1] < d_out) accumulates on the input side
    even alone; with ``share_inputs: false`` every other layer accumulates on the output side (the unshared
    route). The rest wait for :func:`decide_group`.
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


def decide_group(members: list, dim: int, positions: int, options: MomentOptions) -> str:
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


class Accumulator:
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
