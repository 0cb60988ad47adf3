"""Effective rank and stable rank of matrices, including low-rank products, without forming them.

Pure maths on tensors; no knowledge of models, PEFT or logging (see :mod:`astra.telemetry.rank` for that).

Definitions
-----------
For a matrix with singular values ``sigma_1 >= ... >= sigma_k >= 0``:

- **effective rank** (Roy & Vetterli, 2007): ``exp(H(p))`` with ``p_i = sigma_i / sum_j sigma_j`` and
  ``H(p) = -sum_i p_i log p_i`` (``0 log 0 = 0``). It lies in ``[1, k]`` for a non-zero matrix; we define it
  as ``0`` for the zero matrix (e.g. a LoRA update at init, where ``B = 0``).
- **stable rank**: ``||M||_F^2 / ||M||_2^2 = sum_i sigma_i^2 / sigma_1^2``, in ``[1, k]``; ``0`` for the zero
  matrix.

Low-rank products
-----------------
An adapter update ``dW = s * B @ A`` (``B``: ``d_out x r``, ``A``: ``r x d_in``) has at most ``r`` non-zero
singular values. With the reduced QR factorisations ``B = Q_B R_B`` and ``A^T = Q_A R_A``,
``dW = Q_B (s R_B R_A^T) Q_A^T``; ``Q_B`` and ``Q_A`` have orthonormal columns, so the singular values of
``dW`` are exactly those of the small ``r x r`` core ``s R_B R_A^T``. Cost: ``O((d_out + d_in) r^2)`` instead
of ``O(d_out d_in min(d_out, d_in))``, and the ``d_out x d_in`` matrix is never formed. Every function
accepts leading batch dimensions, so all adapters of one shape are handled by one batched QR and one
batched SVD.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "effective_rank",
    "stable_rank",
    "spectrum_from_eigenvalues",
    "lowrank_singular_values",
    "dense_singular_values",
    "lowrank_ranks",
    "dense_ranks",
]

Scaling = float | Tensor


def effective_rank(singular_values: Tensor) -> Tensor:
    """Roy & Vetterli effective rank of the spectrum(s) in the last dimension; ``0`` for an all-zero spectrum.

    ``singular_values``: shape ``(..., k)``, non-negative (tiny negatives from round-off are clamped to 0).
    Returns shape ``(...)``, in the input's floating dtype.
    """
    s = singular_values.clamp_min(0)
    total = s.sum(dim=-1, keepdim=True)
    p = s / torch.where(total > 0, total, torch.ones_like(total))
    # 0 * log 0 := 0; xlogy does exactly that.
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    out = torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))
    return _nan_where_nan(singular_values, out)


def _nan_where_nan(singular_values: Tensor, out: Tensor) -> Tensor:
    """A spectrum holding NaN (a diverged matrix) has no rank: NaN, never a plausible-looking 0."""
    return torch.where(torch.isnan(singular_values).any(dim=-1), torch.full_like(out, float("nan")), out)


def stable_rank(singular_values: Tensor) -> Tensor:
    """``sum sigma_i^2 / max sigma_i^2`` over the last dimension; ``0`` for an all-zero spectrum."""
    s = singular_values.clamp_min(0)
    top = s.amax(dim=-1)
    frob = s.square().sum(dim=-1)
    out = torch.where(top > 0, frob / torch.where(top > 0, top, torch.ones_like(top)).square(), torch.zeros_like(top))
    return _nan_where_nan(singular_values, out)


def spectrum_from_eigenvalues(eigenvalues: Tensor) -> Tensor:
    """Singular values of a symmetric PSD matrix from its eigenvalues: clamp round-off negatives to 0, sort
    descending. (For PSD matrices the singular values are the eigenvalues.)"""
    values = torch.as_tensor(eigenvalues).detach()
    if not values.is_floating_point():
        values = values.double()
    return values.clamp_min(0).sort(dim=-1, descending=True).values


def lowrank_singular_values(
    A: Tensor,
    B: Tensor,
    scaling: Scaling = 1.0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Singular values (descending) of ``scaling * B @ A`` via QR of ``B`` and ``A^T`` and the SVD of the core.

    ``A``: ``(..., r, d_in)``; ``B``: ``(..., d_out, r)``; ``scaling``: a float or a tensor broadcastable to
    the batch shape ``(...)``. Returns ``(..., min(r, d_out, d_in))`` values. ``dtype`` is the compute dtype
    (``None``: the inputs' dtype); low-precision factors (bf16/fp16) are upcast to float32, since QR/SVD
    are not implemented for them.
    """
    if A.shape[-2] != B.shape[-1]:
        raise ValueError(f"rank mismatch: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
    compute = dtype or A.dtype
    if compute not in (torch.float32, torch.float64):
        compute = torch.float32
    A = A.detach().to(compute)
    B = B.detach().to(compute)
    r_b = torch.linalg.qr(B, mode="r").R  # (..., min(d_out, r), r)
    r_a = torch.linalg.qr(A.transpose(-1, -2), mode="r").R  # (..., min(d_in, r), r)
    core = r_b @ r_a.transpose(-1, -2)
    if isinstance(scaling, Tensor):
        scale = scaling.detach().to(device=core.device, dtype=compute).abs()
        core = core * scale.reshape(scale.shape + (1, 1))
    else:
        core = core * abs(float(scaling))
    return svdvals_or_nan(core)


def svdvals_or_nan(matrix: Tensor) -> Tensor:
    """``torch.linalg.svdvals``, but a matrix holding NaN or Inf (a diverged run) gives NaN singular values
    instead of an error, so telemetry never masks the divergence the run reports. No host sync."""
    bad = ~torch.isfinite(matrix).flatten(-2).all(-1)
    values = torch.linalg.svdvals(torch.where(bad[..., None, None], torch.zeros_like(matrix), matrix))
    return torch.where(bad[..., None], torch.full_like(values, float("nan")), values)


def dense_singular_values(matrix: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Singular values (descending) of a dense matrix (or batch), flattening trailing dims beyond 2 (conv)."""
    if matrix.dim() > 2:
        matrix = matrix.flatten(1)
    compute = dtype or matrix.dtype
    if compute not in (torch.float32, torch.float64):
        compute = torch.float32
    return svdvals_or_nan(matrix.detach().to(compute))


def lowrank_ranks(A: Tensor, B: Tensor, scaling: Scaling = 1.0) -> tuple[Tensor, Tensor]:
    """``(effective_rank, stable_rank)`` of ``scaling * B @ A`` (batched like :func:`lowrank_singular_values`)."""
    sv = lowrank_singular_values(A, B, scaling)
    return effective_rank(sv), stable_rank(sv)


def dense_ranks(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """``(effective_rank, stable_rank)`` of a dense matrix."""
    sv = dense_singular_values(matrix)
    return effective_rank(sv), stable_rank(sv)
