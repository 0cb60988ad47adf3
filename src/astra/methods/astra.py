"""Astra: LoRA initialised from the eigenvectors of each layer's calibration output moment.

Liu, Zhang, Cheng et al., arXiv 2602.19111; reference code github.com/LyoAI/Astra. For a target layer with
weight W (d_out x d_in) and output moment C (d_out x d_out, see :mod:`astra.calibration.moments`):
``eigh(C)`` ascending, B = the chosen r eigenvectors (``top``: the last r columns, the r largest eigenvalues,
which paper and code call the "tail"), A = B^T W, and the frozen weight becomes W - s * B @ A, so the model's
output is unchanged at initialisation. Training afterwards is plain LoRA.

The init reads as the algorithm: statistics (the calibration engine) -> basis (an eigensolver per layer, see
:mod:`astra.methods.eigensolver_policy`) -> factors -> write into the PEFT layer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import nn

from astra.calibration.common import (
    check_calibration_size,
    dtype_name,
    lora_targets,
    resolve_dtype,
    scalars_to_host,
    stable_seed,
)
from astra.calibration.moment_accumulation import MomentOptions
from astra.calibration.moments import FactoredMoment, collect_output_moments
from astra.methods.base import InitContext
from astra.methods.eigensolver_policy import SolverOptions, randomized_bases, solve_chunk, solver_summary
from astra.methods.eigensolvers import eigen_columns, eigen_problem, exact_basis

log = logging.getLogger(__name__)

# top: Q[:, -r:] (the paper, the reference's "IPM"); bottom: Q[:, :r] (the reference's "KPM");
# middle: Q[:, d//2 : d//2 + r] (the reference's remaining arm); random: seeded orthonormal basis (control arm).
SUBSPACES = ("top", "bottom", "middle", "random")
# A is "zero" (its layer learns nothing through A at first) below this fraction of ||W||_F.
ZERO_A_RTOL = 1e-4


def eigen_problem_size(moment_rows: int, d_out: int, route: str) -> int:
    """Size of the exact eigenproblem for a layer's statistic (``LayerMoment.matrix`` of ``moment_rows`` rows)."""
    return moment_rows if route == "input" and moment_rows < d_out else d_out


def astra_basis(
    moment: torch.Tensor | FactoredMoment,
    rank: int,
    subspace: str = "top",
    *,
    seed: int = 0,
    dtype: Any = torch.float32,
    solver: SolverOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, eigenvalues): the chosen d_out x rank orthonormal eigenvectors (ascending order, as ``eigh`` returns
    them) and the moment's full ascending spectrum, in ``dtype``. With ``solver`` choosing the randomized route
    (top arm only) the spectrum is None and B spans the converged top-r eigenspace (exact when it did not converge
    and ``solver.on_unconverged='exact'``)."""
    dtype = resolve_dtype(dtype)
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace={subspace!r} is not one of {SUBSPACES}")
    solver = solver or SolverOptions()
    problem = eigen_problem(moment, dtype, form_gram=False)
    if solver.choose(subspace, rank, problem.size) == "randomized":
        [(basis, check)] = randomized_bases([problem], rank, solver, seed)
        if check["converged"] or solver.on_unconverged == "warn":
            return basis, None
    return exact_basis(problem, rank, subspace, seed, dtype)


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
    eigen_columns(d_out, rank, subspace)


def _factors_from_basis(weight, basis, scaling, dtype, factor_dtype):
    w = weight.detach().to(dtype)
    basis = basis.to(w.device)
    factor_dtype = factor_dtype or weight.dtype
    lora_b = basis.to(factor_dtype)
    lora_a = (basis.mT @ w).to(factor_dtype)
    # residual from the factors as stored, so residual + s * B @ A reproduces W up to one rounding
    residual = (w - scaling * (lora_b.to(dtype) @ lora_a.to(dtype))).to(weight.dtype)
    return lora_a, lora_b, residual


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
    solver: SolverOptions | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Astra's factors for one layer: ``(A, B, residual)``.

    B (d_out x r): orthonormal eigenvectors of ``moment`` chosen by ``subspace``; A = B^T W (r x d_in);
    residual = W - scaling * B @ A. ``moment`` is the d_out x d_out output moment or a :class:`FactoredMoment`
    (C = F M F^T, solved as a k x k problem when k < d_out). Maths in ``dtype`` (float32/float64); A and B in
    ``factor_dtype`` (default: the weight's dtype), the residual in the weight's dtype. ``seed`` drives the
    ``random`` arm (and the choice of basis inside an exactly-zero eigenspace of a factored moment). ``solver``:
    which eigensolver (:class:`SolverOptions`; default exact ``eigh``).
    """
    _validate(weight, moment, rank, subspace)
    dtype = resolve_dtype(dtype)
    basis, _ = astra_basis(moment, rank, subspace, seed=seed, dtype=dtype, solver=solver)
    return _factors_from_basis(weight, basis, scaling, dtype, factor_dtype)


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




def _group_layers(targets, bases, stats, adapter, subspace, solver):
    """Layers grouped for batched solves: (solver, eigenproblem shape, rank, device) -> names, in model order."""
    groups: dict[tuple, list[str]] = {}
    for name, layer in targets.items():
        stat, weight = stats[name], bases[name].weight
        rank, (d_out, rows) = layer.r[adapter], (weight.shape[0], stat.matrix.shape[0])
        size = eigen_problem_size(rows, d_out, stat.route)
        kind = solver.choose(subspace, rank, size)
        # the randomized route applies a factored moment as it is (k x d_out factors: cheaper than forming it)
        factor_rows = rows if stat.route == "input" else None
        key = (kind, size, d_out if kind == "randomized" else None, factor_rows if kind == "randomized" else None,
               rank if kind == "randomized" else None, weight.device)  # fmt: skip
        groups.setdefault(key, []).append(name)
    return groups


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
    eigensolver: str = "exact",
    oversample: int = 16,
    n_iter: int = 16,
    tolerance: float = 1e-3,
    on_unconverged: str = "exact",
    retry_oversample: int | None = None,
    spectrum: str = "auto",
    cache: bool = True,
    n_samples: int | None = None,
    progress: bool = True,
) -> dict:
    """Initialise every PEFT LoRA layer of ``model`` with Astra (in place); returns the init report.

    The report's ``_moment_eigenvalues`` maps layers to their moment's full ascending spectrum (d_out values, CPU
    float32, clamped at 0): always for exactly solved layers (it comes with ``eigh``); for randomized ones only when
    ``spectrum='always'``, or ``'auto'`` and the telemetry asks (``context.moment_spectrum``), by ``eigvalsh``.
    ``eigen`` reports per layer the solver used and its checks (``gap`` = lam_r / lam_{r+1}; randomized also
    ``residual`` and ``angle_bound``). Options: see ``conf/method/astra.yaml``; ``n_samples`` (passed by run.py) is
    checked against the calibration loader. Eigenproblems of equal shape on one device are solved in stacked
    calls of ``eigh_batch`` problems (None: by free memory on CUDA, one at a time on CPU).
    """
    if subspace not in SUBSPACES:
        raise ValueError(f"subspace={subspace!r} is not one of {SUBSPACES}")
    if spectrum not in ("auto", "always", "never"):
        raise ValueError(f"spectrum={spectrum!r} is not one of ('auto', 'always', 'never')")
    solver = SolverOptions(eigensolver, oversample, n_iter, tolerance, on_unconverged, retry_oversample)
    want_spectrum = spectrum == "always" or (spectrum == "auto" and bool(getattr(context, "moment_spectrum", False)))
    check_calibration_size(calibration_loader, n_samples, "astra")
    options = MomentOptions(normalize=normalize, center=center, mask_padding=mask_padding, dtype=dtype, route=route,
                            share_inputs=share_inputs)  # fmt: skip
    adapter = context.adapter_name
    targets = lora_targets(model, adapter)
    bases = {name: layer.get_base_layer() for name, layer in targets.items()}
    for name, layer in targets.items():  # shape and solver errors before calibration
        d_out = bases[name].weight.shape[0]
        _validate(bases[name].weight, torch.empty(d_out, d_out, device="meta"), layer.r[adapter], subspace)
        solver.choose(subspace, layer.r[adapter], d_out)
    result = collect_output_moments(model, calibration_loader, bases, options, layers_per_pass=layers_per_pass,
                                    offload_to_cpu=offload_to_cpu, cache=cache, context=context, n_samples=n_samples,
                                    progress=progress)  # fmt: skip
    start = time.perf_counter()
    routes = {"output": 0, "input": 0}
    for name in targets:
        routes[result.stats[name].route] += 1
    groups = _group_layers(targets, bases, result.stats, adapter, subspace, solver)
    spectra: dict[str, torch.Tensor] = {}
    checks: dict[str, dict] = {}
    norms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n_calls = 0
    for (kind, size, *_, device), names in groups.items():
        done = 0
        while done < len(names):
            count = _eigh_batch_size(eigh_batch, size, options.dtype, device, len(names) - done)
            chunk, done = names[done : done + count], done + count
            problems = []
            for name in chunk:
                base, stat = bases[name], result.stats.pop(name)
                stat.matrix = stat.matrix.to(base.weight.device)
                problems.append(eigen_problem(stat.for_layer(base.weight, base.bias), options.dtype, form_gram=False))
                del stat
            ranks = [targets[name].r[adapter] for name in chunk]
            seeds = [stable_seed(context.seed, name) for name in chunk]
            solved = solve_chunk(kind, problems, ranks, subspace, seeds, solver, options.dtype, want_spectrum)
            n_calls += 1
            for name, (basis, layer_spectrum, layer_checks) in zip(chunk, solved):
                layer, base = targets[name], bases[name]
                lora_a, lora_b, residual = _factors_from_basis(
                    base.weight, basis, layer.scaling[adapter], options.dtype, layer.lora_A[adapter].weight.dtype
                )
                norms[name] = (lora_a.float().norm(), base.weight.detach().float().norm())
                write_adapter(layer, adapter, lora_a, lora_b, residual)
                checks[name] = layer_checks
                if layer_spectrum is not None:
                    spectra[name] = layer_spectrum.detach().clamp_min(0).to(torch.float32)  # PSD: negatives are rounding
            del problems, solved
    exact_gaps = [name for name in targets if isinstance(checks[name].get("gap"), torch.Tensor)]
    for name, gap in zip(exact_gaps, scalars_to_host([checks[name]["gap"] for name in exact_gaps])):
        checks[name]["gap"] = gap
    eigenvalues = _spectra_to_host(spectra, [name for name in targets if name in spectra])
    flat = scalars_to_host([value for name in targets for value in norms[name]])
    zero_a = [name for index, name in enumerate(targets) if flat[2 * index] <= ZERO_A_RTOL * flat[2 * index + 1]]
    if zero_a:
        log.warning(
            "Astra subspace=%r: A = B^T W is zero for %d layer(s) (expanding layers, d_out > d_in: the chosen "
            "eigenvectors have eigenvalue 0 and lie outside the range of W), so their adapters start inert: %s",
            subspace, len(zero_a), ", ".join(zero_a),
        )  # fmt: skip
    solvers = solver_summary(checks, solver)
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
        "eigensolver": solvers,
        "eigen": checks,
        "spectrum": {  # where each layer's moment eigenvalues (telemetry's moment effective rank) came from
            "eigh": sum(c["solver"] != "randomized" for c in checks.values()),
            "eigvalsh": sum(c["solver"] == "randomized" and name in eigenvalues for name, c in checks.items()),
            "none": sum(name not in eigenvalues for name in targets),
        },
        "zero_A_layers": zero_a,
        **result.report(),
        "init_seconds": round(time.perf_counter() - start, 3),
        "_moment_eigenvalues": eigenvalues,
    }


def _spectra_to_host(spectra: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Host reads once per spectrum size and device, not per layer."""
    by_shape: dict[tuple, list[str]] = {}
    for name in names:
        by_shape.setdefault((spectra[name].shape[0], spectra[name].device), []).append(name)
    on_host = {}
    for group in by_shape.values():
        on_host.update(zip(group, torch.stack([spectra.pop(name) for name in group]).cpu().unbind(0)))
    return {name: on_host[name] for name in names}


