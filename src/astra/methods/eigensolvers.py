"""Eigensolvers for Astra's layer statistics: pure functions of tensors, each with its own tests.

A layer's statistic is either its d_out x d_out output moment C (``dense``) or, on the input route, C = F M F^T
with F = W and M the d_in x d_in input moment (``factored``). Three ways to get eigenvectors from it:

- :func:`eigh_stacked`: dense ``eigh`` of same-size symmetric matrices in one batched call (the reference's
  semantics: every eigenpair, ascending);
- the factored problem (:func:`eigen_problem` with a factored moment, k < d_out): the k x k Gram
  G = (F L)^T (F L), M = L L^T; the nonzero eigenpairs of C are (lam, F L V / sqrt(lam)) for G = V diag(lam) V^T,
  and :func:`factored_basis` completes them with vectors of the zero eigenspace;
- :func:`randomized_top_eigh`: the r eigenvectors of the largest eigenvalues only, by randomized subspace (block
  power) iteration on C, or on its factors (C X = F (M (F^T X)): no d_out x d_out matrix is formed), with a
  residual and gap per problem so a caller can tell converged problems from the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def eigen_columns(dim: int, rank: int, subspace: str) -> slice:
    """Columns of an ascending ``eigh`` that ``subspace`` picks: top = the r largest, bottom = the r smallest,
    middle = d//2 .. d//2 + r (random: unused)."""
    if subspace == "top":
        return slice(dim - rank, dim)
    if subspace == "bottom":
        return slice(0, rank)
    if subspace == "middle":
        if dim // 2 + rank > dim:
            raise ValueError(f"subspace='middle' needs d_out//2 + rank <= d_out, got d_out={dim}, rank={rank}")
        return slice(dim // 2, dim // 2 + rank)
    return slice(0, rank)


def random_orthonormal(
    dim: int, rank: int, seed: int, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> torch.Tensor:
    """A seeded random dim x rank matrix with orthonormal columns (QR of a float64 Gaussian drawn on CPU)."""
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    return q.to(dtype=dtype, device=device)


def symmetric(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.mT) / 2


def psd_factor(moment: torch.Tensor) -> torch.Tensor:
    """L with L @ L.T = moment (Cholesky; a clipped eigen square root when the moment is singular)."""
    factor, info = torch.linalg.cholesky_ex(moment)
    if int(info) == 0:
        return factor
    values, vectors = torch.linalg.eigh(moment)
    return vectors * values.clamp_min(0).sqrt()


@dataclass
class EigenProblem:
    """A layer's statistic, ready for an eigensolver.

    ``dense``: ``matrix`` is the d_out x d_out moment. ``factored`` (C = F M F^T): ``weight`` F (d_out x k) and
    ``inner`` M (k x k), which the randomized route applies to blocks as three thin products. The exact route
    (:meth:`gram`) solves the smaller of two problems: for k < d_out the k x k Gram G = (F L)^T (F L), M = L L^T
    (``factor`` = F L); for k >= d_out the d_out x d_out moment itself, formed from ``source`` as a dense moment
    is, after which the problem is dense.
    """

    matrix: torch.Tensor | None
    weight: torch.Tensor | None = None
    inner: torch.Tensor | None = None
    factor: torch.Tensor | None = None
    dim: int = 0  # d_out
    source: Any = None  # the FactoredMoment (k >= d_out): the dense moment the exact route forms from it
    dtype: torch.dtype | None = None

    @property
    def factored(self) -> bool:
        return self.inner is not None

    @property
    def size(self) -> int:
        """The size of the exact eigenproblem (min(k, d_out) when factored, else d_out)."""
        return min(self.inner.shape[0], self.dim) if self.factored else self.dim

    def gram(self) -> torch.Tensor:
        if self.matrix is None and self.source is not None:  # k >= d_out: the dense moment is the smaller problem
            self.matrix = symmetric(self.source.dense(self.dtype).to(self.dtype))
            self.weight = self.inner = self.source = None
        elif self.matrix is None:
            self.factor = self.weight @ psd_factor(self.inner)
            self.matrix = symmetric(self.factor.mT @ self.factor)
        return self.matrix


def eigen_problem(moment: Any, dtype: torch.dtype, *, form_gram: bool = True) -> EigenProblem:
    """The eigenproblem of a dense moment tensor or of a ``FactoredMoment`` (kept factored until :meth:`gram`)."""
    if hasattr(moment, "inner") and hasattr(moment, "weight"):
        weight = moment.weight.to(dtype)
        wide = moment.inner.shape[0] >= moment.weight.shape[0]
        inner = moment.inner.to(device=weight.device, dtype=dtype)
        inner = inner if wide else symmetric(inner)  # wide: only applied to blocks (or formed densely by gram)
        problem = EigenProblem(None, weight=weight, inner=inner, dim=weight.shape[0], source=moment if wide else None,
                               dtype=dtype)  # fmt: skip
        if form_gram:
            problem.gram()
        return problem
    matrix = symmetric(moment.to(dtype))
    return EigenProblem(matrix, dim=matrix.shape[-1])


def eigh_stacked(matrices: list[torch.Tensor], vectors: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``eigh`` (or ``eigvalsh``) of same-size symmetric matrices in one batched call."""
    stacked = matrices[0][None] if len(matrices) == 1 else torch.stack(matrices)
    if vectors:
        values, vecs = torch.linalg.eigh(stacked)
        return list(zip(values.unbind(0), vecs.unbind(0)))
    return [(values, None) for values in torch.linalg.eigvalsh(stacked).unbind(0)]


def _project_out(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    for _ in range(2):  # twice, for orthogonality in finite precision
        vectors = vectors - basis @ (basis.mT @ vectors)
    return vectors


def orthonormalize_from_top(basis: torch.Tensor) -> torch.Tensor:
    """Re-orthonormalise columns ordered by ascending eigenvalue, keeping the largest-eigenvalue columns fixed first."""
    q, r = torch.linalg.qr(basis.flip(-1))
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q.flip(-1)


def _null_vectors(weight, factor, values, vectors, n_positive, count, seed) -> torch.Tensor:
    """``count`` orthonormal eigenvectors of C = F M F^T for eigenvalue 0, seeded.

    First from range(F)^perp (C's structural null space, where A = B^T W is exactly zero: the expanding-layer case
    of the bottom arm), then, if more are needed (M singular), from range(F) minus range(F L).
    """
    dim, inner_dim = weight.shape
    gaussian = random_orthonormal(dim, count, seed, dtype=weight.dtype, device=weight.device)
    structural = min(count, dim - inner_dim)
    chosen = torch.linalg.qr(_project_out(gaussian[:, :structural], torch.linalg.qr(weight)[0]))[0]
    if count > structural:
        keep = slice(inner_dim - n_positive, inner_dim)
        positive = factor @ vectors[:, keep] / values[keep].sqrt()
        extra = _project_out(gaussian[:, structural:], torch.cat([positive, chosen], dim=1))
        chosen = torch.cat([chosen, torch.linalg.qr(extra)[0]], dim=1)
    return chosen


def factored_basis(problem: EigenProblem, values, vectors, rank: int, subspace: str, seed: int, dtype):
    """(B, full ascending d_out spectrum) of C = F M F^T from the eigenpairs of its k x k Gram (k < d_out).

    The d_out - k eigenvalues outside range(F L) are 0, a degenerate eigenspace in which any orthonormal basis is
    as valid as the one a dense ``eigh`` would return: seeded vectors are taken from it (see :func:`_null_vectors`).
    """
    weight, factor = problem.weight, problem.factor
    dim, inner_dim = weight.shape
    values = values.clamp_min(0)
    spectrum = torch.cat([values.new_zeros(dim - inner_dim), values])
    if subspace == "random":
        return random_orthonormal(dim, rank, seed, dtype=dtype, device=weight.device), spectrum
    columns = range(dim)[eigen_columns(dim, rank, subspace)]
    tol = values[-1] * inner_dim * torch.finfo(dtype).eps
    n_positive = int((values > tol).sum())
    first_positive = dim - n_positive  # ascending index of the first numerically nonzero eigenvalue
    wanted = [j - (dim - inner_dim) for j in columns if j >= first_positive]
    n_null = len(columns) - len(wanted)
    parts = []
    if n_null:
        parts.append(_null_vectors(weight, factor, values, vectors, n_positive, n_null, seed))
    if wanted:
        parts.append(factor @ vectors[:, wanted] / values[wanted].sqrt())
    return orthonormalize_from_top(torch.cat(parts, dim=1)), spectrum


def finish_basis(problem: EigenProblem, values, vectors, rank: int, subspace: str, seed: int, dtype):
    """(B, full ascending d_out spectrum) from the exact eigenpairs of :func:`eigen_problem`'s matrix."""
    if not problem.factored:
        dim = problem.size
        if subspace == "random":
            return random_orthonormal(dim, rank, seed, dtype=dtype, device=values.device), values
        return vectors[:, eigen_columns(dim, rank, subspace)].contiguous(), values
    return factored_basis(problem, values, vectors, rank, subspace, seed, dtype)


def exact_basis(problem: EigenProblem, rank: int, subspace: str, seed: int, dtype):
    [(values, vectors)] = eigh_stacked([problem.gram()], vectors=subspace != "random")
    return finish_basis(problem, values, vectors, rank, subspace, seed, dtype)


# ---------------------------------------------------------------------------------------------- randomized


@dataclass
class TopEigenpairs:
    """The r largest eigenpairs of a batch of PSD operators, ascending (as ``eigh`` orders them), with checks.

    ``residual``: per problem, max_j ||C b_j - lam_j b_j|| / lam_max (the Ritz pairs' own residual).
    ``gap``: lam_r / lam_{r+1}, with lam_{r+1} the largest Ritz value left out (inf when it is 0).
    ``angle_bound``: the Davis-Kahan estimate ||C B - B diag(lam)||_2 / (lam_r - lam_{r+1}) of the sine of the
    largest principal angle between B and the exact top-r eigenspace, at most 1 (1: no gap, nothing is known).
    """

    values: torch.Tensor  # b x r
    vectors: torch.Tensor  # b x d x r
    residual: torch.Tensor  # b
    gap: torch.Tensor  # b
    angle_bound: torch.Tensor  # b
    iterations: torch.Tensor | None = None  # b: power iterations each problem ran (fewer than n_iter once converged)


def _apply(operator: torch.Tensor, inner: torch.Tensor | None, block: torch.Tensor) -> torch.Tensor:
    """C @ block, where C = operator (b x d x d) or, with ``inner``, C = F M F^T (F = operator, b x d x k;
    M = inner, b x k x k): three thin products, never the d x d matrix."""
    if inner is not None:
        return operator @ (inner @ (operator.mT @ block))
    return operator @ block


def randomized_top_eigh(
    operator: torch.Tensor,
    rank: int,
    *,
    inner: torch.Tensor | None = None,
    oversample: int = 16,
    n_iter: int = 4,
    seed: int = 0,
    tolerance: float | None = None,
    check_every: int = 1,
) -> TopEigenpairs:
    """The ``rank`` largest eigenpairs of PSD matrices by randomized subspace iteration (Halko, Martinsson and
    Tropp 2011, Alg. 4.4, with a Rayleigh-Ritz step).

    ``operator``: b x d x d symmetric moments C, or (with ``inner`` M, b x k x k) factors F with C = F M F^T, so C
    is never formed. A seeded Gaussian block of ``rank + oversample`` columns is multiplied by C and
    re-orthonormalised up to ``n_iter`` times; the eigenpairs of the projected (rank + oversample)^2 matrix give the
    Ritz pairs. With ``tolerance``, the Ritz pairs are checked every ``check_every`` iterations (a check reuses
    the product the next iteration needs, and costs l^2 d against the d^2 l of an iteration) and each problem stops
    once its ``angle_bound`` is within it (the rest of the batch goes on without it). Maths in the operator's dtype
    (float32 or float64). The subspace error shrinks like (lam_{l+1} / lam_r)^(2 n_iter + 1), l = rank + oversample,
    so a spectrum with a gap after the r-th eigenvalue converges in a few iterations; the returned ``angle_bound``
    says per problem whether it did.
    """
    if operator.dim() == 2:
        operator = operator[None]
        inner = None if inner is None else inner[None]
    batch, dim = operator.shape[0], operator.shape[1]
    if not 1 <= rank <= dim:
        raise ValueError(f"rank={rank} must be between 1 and the matrix size {dim}")
    if oversample < 1 or n_iter < 0 or check_every < 1:
        raise ValueError(f"oversample={oversample} and check_every={check_every} must be >= 1, n_iter={n_iter} >= 0")
    width = min(dim, rank + oversample)
    generator = torch.Generator().manual_seed(int(seed))
    sketch = torch.randn(batch, dim, width, generator=generator, dtype=torch.float64)
    block = torch.linalg.qr(_apply(operator, inner, sketch.to(operator.device, operator.dtype)))[0]
    out = TopEigenpairs(operator.new_empty(batch, rank), operator.new_empty(batch, dim, rank),
                        *(operator.new_empty(batch) for _ in range(3)),
                        iterations=torch.zeros(batch, dtype=torch.long))  # fmt: skip
    # The problems still iterating: one that has converged is stored and leaves the batch, so a slow layer (a small
    # gap) no longer makes every layer of its shape run all n_iter iterations.
    active = torch.arange(batch, device=operator.device)
    done = 0
    while True:
        image = _apply(operator, inner, block)
        result = _rayleigh_ritz(block, image, rank)
        finished = torch.full_like(result.residual, done >= n_iter, dtype=torch.bool)
        if tolerance is not None:
            finished |= result.angle_bound <= tolerance
        if bool(finished.any()):
            rows = active[finished]
            for name in ("values", "vectors", "residual", "gap", "angle_bound"):
                getattr(out, name)[rows] = getattr(result, name)[finished]
            out.iterations[rows.cpu()] = done
            if bool(finished.all()):
                return out
            keep = ~finished
            active, block, image, operator = active[keep], block[keep], image[keep], operator[keep]
            inner = None if inner is None else inner[keep]
        steps = min(check_every if tolerance is not None else n_iter, n_iter - done)
        block = torch.linalg.qr(image)[0]  # image = C @ block: the first of these power steps, already paid for
        for _ in range(steps - 1):
            block = torch.linalg.qr(_apply(operator, inner, block))[0]
        done += steps


def _rayleigh_ritz(block: torch.Tensor, image: torch.Tensor, rank: int) -> TopEigenpairs:
    """The top ``rank`` Ritz pairs of C on span(block) (orthonormal, b x d x l; image = C @ block), with checks."""
    width = block.shape[-1]
    ritz_values, ritz_vectors = torch.linalg.eigh(symmetric(block.mT @ image))  # ascending, b x width
    top = ritz_vectors[..., width - rank :]
    values = ritz_values[..., width - rank :]
    vectors = block @ top
    residual_vectors = image @ top - vectors * values[:, None, :]
    tiny = torch.finfo(block.dtype).tiny
    scale = values[..., -1].abs().clamp_min(tiny)
    residual = torch.linalg.vector_norm(residual_vectors, dim=1).amax(dim=-1) / scale
    # The largest Ritz value left out estimates lam_{r+1} (from below: the bound is an estimate, not a guarantee).
    left_out = ritz_values[..., width - rank - 1].clamp_min(0) if width > rank else torch.zeros_like(scale)
    lam_r = values[..., 0]
    gap = torch.where(left_out > 0, lam_r / left_out.clamp_min(tiny), torch.full_like(lam_r, torch.inf))
    separation = lam_r - left_out
    norm = torch.linalg.matrix_norm(residual_vectors, ord=2)
    angle_bound = torch.where(separation > 0, norm / separation.clamp_min(tiny), torch.ones_like(norm))
    return TopEigenpairs(values, vectors, residual, gap, angle_bound.clamp_max(1.0))
