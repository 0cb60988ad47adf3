"""Astra: LoRA initialised from the eigenvectors of each layer's calibration output moment.

Liu, Zhang, Cheng et al., arXiv 2602.19111; reference code github.com/LyoAI/Astra. For a target layer with
weight W (d_out x d_in) and output moment C (d_out x d_out, see :mod:`astra.calibration.moments`):
``eigh(C)`` ascending, B = the chosen r eigenvectors (``top``: the last r columns, the r largest eigenvalues,
which paper and code call the "tail"), A = B^T W, and the frozen weight becomes W - s * B @ A, so the model's
output is unchanged at initialisation. Training afterwards is plain LoRA.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from astra.calibration import FactoredMoment, MomentOptions, collect_output_moments, resolve_dtype
from astra.calibration.common import (
    check_calibration_size,
    dtype_name,
    lora_targets,
    scalars_to_host,
    stable_seed,
)
from astra.methods.base import InitContext

log = logging.getLogger(__name__)

# top: Q[:, -r:] (the paper, the reference's "IPM"); bottom: Q[:, :r] (the reference's "KPM");
# middle: Q[:, d//2 : d//2 + r] (the reference's remaining arm); random: seeded orthonormal basis (control arm).
SUBSPACES = ("top", "bottom", "middle", "random")
# A is "zero" (its layer learns nothing through A at first) below this fraction of ||W||_F.
ZERO_A_RTOL = 1e-4


def _eigen_columns(dim: int, rank: int, subspace: str) -> slice:
    if subspace == "top":
        return slice(dim - rank, dim)
    if subspace == "bottom":
        return slice(0, rank)
    if subspace == "middle":
        if dim // 2 + rank > dim:
            raise ValueError(f"subspace='middle' needs d_out//2 + rank <= d_out, got d_out={dim}, rank={rank}")
        return slice(dim // 2, dim // 2 + rank)
    return slice(0, rank)  # random: unused


def random_orthonormal(
    dim: int, rank: int, seed: int, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> torch.Tensor:
    """A seeded random dim x rank matrix with orthonormal columns (QR of a float64 Gaussian drawn on CPU)."""
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    return q.to(dtype=dtype, device=device)


def _orthonormalize_from_top(basis: torch.Tensor) -> torch.Tensor:
    """Re-orthonormalise columns ordered by ascending eigenvalue, keeping the largest-eigenvalue columns fixed first."""
    q, r = torch.linalg.qr(basis.flip(-1))
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)
    return q.flip(-1)


def _psd_factor(moment: torch.Tensor) -> torch.Tensor:
    """L with L @ L.T = moment (Cholesky; a clipped eigen square root when the moment is singular)."""
    factor, info = torch.linalg.cholesky_ex(moment)
    if int(info) == 0:
        return factor
    values, vectors = torch.linalg.eigh(moment)
    return vectors * values.clamp_min(0).sqrt()


def _project_out(vectors: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    for _ in range(2):  # twice, for orthogonality in finite precision
        vectors = vectors - basis @ (basis.mT @ vectors)
    return vectors


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


def _symmetric(matrix: torch.Tensor) -> torch.Tensor:
    return (matrix + matrix.mT) / 2


@dataclass
class _EigenProblem:
    """The symmetric matrix whose eigendecomposition gives a layer's basis, and what finishing the basis needs.

    ``dense``: the d_out x d_out output moment itself. ``factored`` (C = F M F^T with k < d_out): the k x k Gram
    G = (F L)^T (F L), M = L L^T; the nonzero eigenpairs of C are (lam, F L V / sqrt(lam)) for G = V diag(lam) V^T.
    """

    matrix: torch.Tensor
    weight: torch.Tensor | None = None  # factored: F (d_out x k)
    factor: torch.Tensor | None = None  # factored: F L (d_out x k)

    @property
    def size(self) -> int:
        return self.matrix.shape[-1]


def _eigen_problem(moment: torch.Tensor | FactoredMoment, dtype: torch.dtype) -> _EigenProblem:
    if isinstance(moment, FactoredMoment):
        if moment.inner.shape[0] < moment.weight.shape[0]:
            weight = moment.weight.to(dtype)
            inner = moment.inner.to(device=weight.device, dtype=dtype)
            factor = weight @ _psd_factor(_symmetric(inner))
            return _EigenProblem(_symmetric(factor.mT @ factor), weight, factor)
        moment = moment.dense(dtype)
    return _EigenProblem(_symmetric(moment.to(dtype)))


def eigen_problem_size(moment_rows: int, d_out: int, route: str) -> int:
    """Size of the eigenproblem for a layer's statistic (``LayerMoment.matrix`` of ``moment_rows`` rows)."""
    return moment_rows if route == "input" and moment_rows < d_out else d_out


def _eigh_stacked(matrices: list[torch.Tensor], vectors: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``eigh`` (or ``eigvalsh``) of same-size symmetric matrices in one batched call."""
    stacked = matrices[0][None] if len(matrices) == 1 else torch.stack(matrices)
    if vectors:
        values, vecs = torch.linalg.eigh(stacked)
        return list(zip(values.unbind(0), vecs.unbind(0)))
    return [(values, None) for values in torch.linalg.eigvalsh(stacked).unbind(0)]


def _finish_basis(problem: _EigenProblem, values, vectors, rank: int, subspace: str, seed: int, dtype):
    """(B, full ascending d_out spectrum) from the eigenpairs of :func:`_eigen_problem`'s matrix."""
    if problem.weight is None:
        dim = problem.size
        if subspace == "random":
            return random_orthonormal(dim, rank, seed, dtype=dtype, device=values.device), values
        return vectors[:, _eigen_columns(dim, rank, subspace)].contiguous(), values
    return _factored_basis(problem, values, vectors, rank, subspace, seed, dtype)


def _factored_basis(problem: _EigenProblem, values, vectors, rank: int, subspace: str, seed: int, dtype):
    """Eigenvectors of C = F M F^T from the k x k eigenproblem (k < d_out), with the full d_out spectrum.

    The d_out - k eigenvalues outside range(F L) are 0, a degenerate eigenspace in which any orthonormal basis is
    as valid as the one a dense ``eigh`` would return: seeded vectors are taken from it (see :func:`_null_vectors`).
    """
    weight, factor = problem.weight, problem.factor
    dim, inner_dim = weight.shape
    values = values.clamp_min(0)
    spectrum = torch.cat([values.new_zeros(dim - inner_dim), values])
    if subspace == "random":
        return random_orthonormal(dim, rank, seed, dtype=dtype, device=weight.device), spectrum
    columns = range(dim)[_eigen_columns(dim, rank, subspace)]
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
    return _orthonormalize_from_top(torch.cat(parts, dim=1)), spectrum


def astra_basis(
    moment: torch.Tensor | FactoredMoment,
    rank: int,
    subspace: str = "top",
    *,
    seed: int = 0,
    dtype: Any = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, eigenvalues): the chosen d_out x rank orthonormal eigenvectors (ascending order, as ``eigh`` returns
    them) and the moment's full ascending spectrum, in ``dtype``."""
    dtype = resolve_dtype(dtype)
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace={subspace!r} is not one of {SUBSPACES}")
    problem = _eigen_problem(moment, dtype)
    [(values, vectors)] = _eigh_stacked([problem.matrix], vectors=subspace != "random")
    return _finish_basis(problem, values, vectors, rank, subspace, seed, dtype)


def _validate(weight: torch.Tensor, moment: Any, rank: int, subspace: str) -> None:
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace={subspace!r} is not one of {SUBSPACES}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (d_out x d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if not isinstance(rank, int) or not 1 <= rank <= min(d_out, d_in):
        raise ValueError(f"rank={rank!r} must be an integer between 1 and min(d_out, d_in)={min(d_out, d_in)}")
    if tuple(moment.shape) != (d_out, d_out):
        raise ValueError(f"moment must be d_out x d_out = {d_out}x{d_out}, got {tuple(moment.shape)}")
    _eigen_columns(d_out, rank, subspace)


def _factors_from_basis(weight, basis, scaling, dtype, factor_dtype):
    w = weight.detach().to(dtype)
    basis = basis.to(w.device)
    factor_dtype = factor_dtype or weight.dtype
    lora_b = basis.to(factor_dtype)
    lora_a = (basis.mT @ w).to(factor_dtype)
    # residual from the factors as stored, so residual + s * B @ A reproduces W up to one rounding
    residual = (w - scaling * (lora_b.to(dtype) @ lora_a.to(dtype))).to(weight.dtype)
    return lora_a, lora_b, residual


def _factors_and_spectrum(weight, moment, rank, scaling, subspace, seed, dtype, factor_dtype):
    _validate(weight, moment, rank, subspace)
    dtype = resolve_dtype(dtype)
    basis, spectrum = astra_basis(moment, rank, subspace, seed=seed, dtype=dtype)
    return (*_factors_from_basis(weight, basis, scaling, dtype, factor_dtype), spectrum)


def astra_factors(
    weight: torch.Tensor,
    moment: torch.Tensor | FactoredMoment,
    rank: int,
    scaling: float,
    subspace: str = "top",
    *,
    seed: int = 0,
    dtype: Any = torch.float32,
    factor_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Astra's factors for one layer: ``(A, B, residual)``.

    B (d_out x r): orthonormal eigenvectors of ``moment`` chosen by ``subspace``; A = B^T W (r x d_in);
    residual = W - scaling * B @ A. ``moment`` is the d_out x d_out output moment or a :class:`FactoredMoment`
    (C = F M F^T, solved as a k x k problem when k < d_out). Maths in ``dtype`` (float32/float64); A and B in
    ``factor_dtype`` (default: the weight's dtype), the residual in the weight's dtype. ``seed`` drives the
    ``random`` arm (and the choice of basis inside an exactly-zero eigenspace of a factored moment).
    """
    lora_a, lora_b, residual, _ = _factors_and_spectrum(
        weight, moment, rank, scaling, subspace, seed, dtype, factor_dtype
    )
    return lora_a, lora_b, residual


@torch.no_grad()
def write_adapter(
    layer: nn.Module, adapter: str, lora_a: torch.Tensor, lora_b: torch.Tensor, residual: torch.Tensor
) -> None:
    """Overwrite a PEFT LoRA layer's A, B and base weight in place (shapes must match)."""
    layer.lora_A[adapter].weight.copy_(lora_a)
    layer.lora_B[adapter].weight.copy_(lora_b)
    layer.get_base_layer().weight.copy_(residual)


def _eigh_batch_size(requested: int | None, size: int, dtype: torch.dtype, device: torch.device, pending: int) -> int:
    """How many same-size eigenproblems go into one stacked ``eigh`` call.

    ``requested`` (an int) wins. ``None``: on CUDA, as many as fit in half the free device memory (each needs the
    stacked input, its eigenvectors and solver workspace: about 4 n^2 numbers), at most 64; on CPU 1 (LAPACK
    loops over a batch anyway, so stacking only costs memory there).
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"eigh_batch={requested} must be a positive integer or null (automatic)")
        return min(int(requested), pending)
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_problem = 4 * size * size * torch.finfo(dtype).bits // 8
    return max(1, min(pending, 64, int(0.5 * free) // per_problem))


def init_astra(
    model: nn.Module,
    calibration_loader: torch.utils.data.DataLoader | None,
    context: InitContext,
    *,
    subspace: str = "top",
    normalize: str = "signed_max",
    center: bool = False,
    mask_padding: bool = False,
    dtype: Any = "float32",
    route: str = "auto",
    share_inputs: Any = "auto",
    layers_per_pass: int | None = None,
    offload_to_cpu: bool = False,
    eigh_batch: int | None = None,
    cache: bool = True,
    n_samples: int | None = None,
    progress: bool = True,
) -> dict:
    """Initialise every PEFT LoRA layer of ``model`` with Astra (in place); returns the init report.

    The report's ``_moment_eigenvalues`` maps each layer to its moment's full ascending spectrum (d_out values, CPU
    float32, clamped at 0). Options: see ``conf/method/astra.yaml``; ``n_samples`` (passed by run.py) is checked
    against the calibration loader. Eigenproblems of equal size on one device are solved in stacked ``eigh``
    calls of ``eigh_batch`` matrices (None: by free memory on CUDA, one at a time on CPU).
    """
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace={subspace!r} is not one of {SUBSPACES}")
    check_calibration_size(calibration_loader, n_samples, "astra")
    options = MomentOptions(
        normalize=normalize,
        center=center,
        mask_padding=mask_padding,
        dtype=dtype,
        route=route,
        share_inputs=share_inputs,
    )
    adapter = context.adapter_name
    targets = lora_targets(model, adapter)
    bases = {name: layer.get_base_layer() for name, layer in targets.items()}
    for name, layer in targets.items():  # shape errors before calibration
        d_out = bases[name].weight.shape[0]
        _validate(bases[name].weight, torch.empty(d_out, d_out, device="meta"), layer.r[adapter], subspace)
    result = collect_output_moments(
        model,
        calibration_loader,
        bases,
        options,
        layers_per_pass=layers_per_pass,
        offload_to_cpu=offload_to_cpu,
        cache=cache,
        context=context,
        n_samples=n_samples,
        progress=progress,
    )
    start = time.perf_counter()
    routes = {"output": 0, "input": 0}
    # Same-size eigenproblems on one device, in model order within each group.
    groups: dict[tuple[int, torch.device], list[str]] = {}
    for name in targets:
        stat, weight = result.stats[name], bases[name].weight
        routes[stat.route] += 1
        size = eigen_problem_size(stat.matrix.shape[0], weight.shape[0], stat.route)
        groups.setdefault((size, weight.device), []).append(name)
    spectra: dict[str, torch.Tensor] = {}
    norms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n_calls = 0
    for (size, device), names in groups.items():
        done = 0
        while done < len(names):
            count = _eigh_batch_size(eigh_batch, size, options.dtype, device, len(names) - done)
            chunk, done = names[done : done + count], done + count
            problems = []
            for name in chunk:
                base = bases[name]
                stat = result.stats.pop(name)
                stat.matrix = stat.matrix.to(base.weight.device)
                problems.append(_eigen_problem(stat.for_layer(base.weight, base.bias), options.dtype))
                del stat
            solved = _eigh_stacked([p.matrix for p in problems], vectors=subspace != "random")
            n_calls += 1
            for name, problem, (values, vectors) in zip(chunk, problems, solved):
                layer, base = targets[name], bases[name]
                basis, spectrum = _finish_basis(
                    problem,
                    values,
                    vectors,
                    layer.r[adapter],
                    subspace,
                    stable_seed(context.seed, name),
                    options.dtype,
                )
                lora_a, lora_b, residual = _factors_from_basis(
                    base.weight, basis, layer.scaling[adapter], options.dtype, layer.lora_A[adapter].weight.dtype
                )
                norms[name] = (lora_a.float().norm(), base.weight.detach().float().norm())
                write_adapter(layer, adapter, lora_a, lora_b, residual)
                spectra[name] = spectrum.detach().clamp_min(0).to(torch.float32)  # PSD: negatives are rounding
            del problems, solved
    # Host reads once at the end, not per layer.
    by_shape: dict[tuple, list[str]] = {}
    for name in targets:
        by_shape.setdefault((spectra[name].shape[0], spectra[name].device), []).append(name)
    on_host = {}
    for names in by_shape.values():
        on_host.update(zip(names, torch.stack([spectra.pop(name) for name in names]).cpu().unbind(0)))
    eigenvalues = {name: on_host[name] for name in targets}
    flat = scalars_to_host([value for name in targets for value in norms[name]])
    zero_a = [name for index, name in enumerate(targets) if flat[2 * index] <= ZERO_A_RTOL * flat[2 * index + 1]]
    if zero_a:
        log.warning(
            "Astra subspace=%r: A = B^T W is zero for %d layer(s) (expanding layers, d_out > d_in: the chosen "
            "eigenvectors have eigenvalue 0 and lie outside the range of W), so their adapters start inert: %s",
            subspace,
            len(zero_a),
            ", ".join(zero_a),
        )
    return {
        "method": "astra",
        "subspace": subspace,
        "normalize": normalize,
        "center": bool(center),
        "mask_padding": bool(mask_padding),
        "dtype": dtype_name(options.dtype),
        "n_layers": len(targets),
        "routes": routes,
        "eigh_calls": n_calls,
        "zero_A_layers": zero_a,
        **result.report(),
        "init_seconds": round(time.perf_counter() - start, 3),
        "_moment_eigenvalues": eigenvalues,
    }
