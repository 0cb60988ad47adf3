"""Which eigensolver each Astra layer gets, and the randomized solver run over a batch of layers with its checks.

``method.init.eigensolver``:

- ``exact``: dense ``eigh`` of every layer's eigenproblem (the reference code's semantics; the default);
- ``randomized``: the top-r eigenvectors by randomized subspace iteration (:func:`randomized_top_eigh`), for the
  ``top`` arm only (``bottom``/``middle`` need the other end or the middle of the spectrum, ``random`` none);
- ``auto``: randomized for the ``top`` arm when max(n_iter, 4) x (r + oversample) is at most the problem size d,
  exact otherwise. The rule is a cost model: the randomized solve's worst case is n_iter products of d x d by
  d x (r + oversample), about n_iter d^2 (r + oversample) operations, against about d^3 for the dense solve. On
  SmolLM2-135M's real moments (d = 576, n_iter = 16; ``experiments/bench/real_eigensolver.py``) the randomized
  solve was 0.58x exact at r = 8 (16 x 24 = 384 <= 576) and 2.7x at r = 32 (16 x 48 = 768 > 576), where most
  layers also needed all 16 iterations and an exact re-solve.

A randomized solve is accepted when its Davis-Kahan angle estimate (``TopEigenpairs.angle_bound``) is at most
``tolerance``. A layer that is not is solved once more with the wider block ``retry_oversample`` when one is set
(a cluster of eigenvalues just below lam_r slows a narrow block; a wider one reaches past it) and the block stays
narrower than the problem. What is still unconverged goes to ``on_unconverged``: ``exact`` re-solves the layer
exactly (the result is the reference's), ``warn`` keeps the approximate basis. Either way the layers are named in a
warning and in the init report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from astra.methods.eigensolvers import EigenProblem, eigh_stacked, exact_basis, finish_basis, randomized_top_eigh

log = logging.getLogger(__name__)

EIGENSOLVERS = ("exact", "randomized", "auto")
ON_UNCONVERGED = ("exact", "warn")


@dataclass(frozen=True)
class SolverOptions:
    eigensolver: str = "exact"
    oversample: int = 16  # extra columns in the random block (l = r + oversample)
    n_iter: int = 16  # at most this many power iterations (PiSSA's pissa_niter_16 runs 16); stops when converged
    tolerance: float = 1e-3  # largest accepted estimate of the sine of the principal angle to the exact subspace
    on_unconverged: str = "exact"
    retry_oversample: int | None = None  # a second, wider randomized solve of unconverged layers (None: none)

    def __post_init__(self):
        if self.eigensolver not in EIGENSOLVERS:
            raise ValueError(f"eigensolver={self.eigensolver!r} is not one of {EIGENSOLVERS}")
        if self.on_unconverged not in ON_UNCONVERGED:
            raise ValueError(f"on_unconverged={self.on_unconverged!r} is not one of {ON_UNCONVERGED}")
        if not isinstance(self.oversample, int) or self.oversample < 1:
            raise ValueError(f"oversample={self.oversample!r} must be a positive integer")
        if not isinstance(self.n_iter, int) or self.n_iter < 0:
            raise ValueError(f"n_iter={self.n_iter!r} must be a non-negative integer")
        if self.retry_oversample is not None and (not isinstance(self.retry_oversample, int)
                                                  or self.retry_oversample <= self.oversample):  # fmt: skip
            raise ValueError(f"retry_oversample={self.retry_oversample!r} must be null or an integer above "
                             f"oversample={self.oversample}")  # fmt: skip
        if not 0 < float(self.tolerance) < 1:
            raise ValueError(f"tolerance={self.tolerance!r} must lie in (0, 1)")

    def choose(self, subspace: str, rank: int, size: int) -> str:
        """``exact`` or ``randomized`` for a layer whose exact eigenproblem has ``size`` rows."""
        if self.eigensolver == "exact" or subspace != "top":
            if self.eigensolver == "randomized" and subspace != "top":
                raise ValueError(
                    f"eigensolver='randomized' computes the top-r eigenvectors only; subspace={subspace!r} needs "
                    "the exact solver (eigensolver=exact or auto)"
                )
            return "exact"
        if self.eigensolver == "randomized":
            return "randomized"
        return "randomized" if max(self.n_iter, 4) * (rank + self.oversample) <= size else "exact"


def randomized_bases(
    problems: list[EigenProblem], rank: int, solver: SolverOptions, seed: int
) -> list[tuple[torch.Tensor, dict]]:
    """(B, checks) per problem (all of one shape, stacked into one batched solve). B: d_out x rank, ascending.
    checks: residual (max_j ||C b_j - lam_j b_j|| / lam_max), gap (lam_r / lam_{r+1}), angle_bound, converged,
    oversample (the block's extra columns; ``retry_oversample`` for layers solved a second time)."""
    out = _randomized_once(problems, rank, solver, seed)
    wider = solver.retry_oversample
    retry = [k for k, (_, checks) in enumerate(out) if not checks["converged"]]
    if retry and wider and rank + wider < problems[0].size:
        wide = replace(solver, oversample=wider, retry_oversample=None)
        again = _randomized_once([problems[k] for k in retry], rank, wide, seed)
        for k, (basis, checks) in zip(retry, again):
            out[k] = (basis, {**checks, "retried": True})
    return out


def _randomized_once(problems: list[EigenProblem], rank: int, solver: SolverOptions, seed: int):
    factored = problems[0].factored
    operator = torch.stack([p.weight if factored else p.matrix for p in problems])
    inner = torch.stack([p.inner for p in problems]) if factored else None
    top = randomized_top_eigh(
        operator, rank, inner=inner, oversample=solver.oversample, n_iter=solver.n_iter, seed=seed,
        tolerance=solver.tolerance,
    )
    del operator, inner
    checks = torch.stack([top.residual, top.gap, top.angle_bound]).double().cpu().tolist()  # one host read
    iterations = top.iterations.tolist()
    out = []
    for index, vectors in enumerate(top.vectors.unbind(0)):
        residual, gap, angle = (checks[row][index] for row in range(3))
        out.append((vectors, {"solver": "randomized", "residual": residual, "gap": gap, "angle_bound": angle,
                              "iterations": iterations[index], "converged": angle <= solver.tolerance,
                              "oversample": solver.oversample}))  # fmt: skip
    return out


def solve_chunk(kind: str, problems: list[EigenProblem], ranks: list[int], subspace: str, seeds: list[int],
                 solver: SolverOptions, dtype, want_spectrum: bool):  # fmt: skip
    """Per problem: (B, spectrum or None, checks). ``exact``: one stacked ``eigh``; ``randomized``: one batched
    randomized solve, unconverged layers re-solved exactly when ``solver.on_unconverged='exact'``."""
    if kind == "exact":
        solved = eigh_stacked([p.gram() for p in problems], vectors=subspace != "random")
        out = []
        for problem, rank, seed, (values, vectors) in zip(problems, ranks, seeds, solved):
            basis, spectrum = finish_basis(problem, values, vectors, rank, subspace, seed, dtype)
            checks = {"solver": "exact"}
            if subspace == "top" and rank < spectrum.shape[0]:
                # a 0-dim tensor: init_astra reads every layer's gap to the host at once, not one sync per layer
                checks["gap"] = spectrum[-rank] / spectrum[-rank - 1].clamp_min(torch.finfo(dtype).tiny)
            out.append((basis, spectrum, checks))
        return out
    out = []
    for problem, seed, (basis, checks) in zip(problems, seeds, randomized_bases(problems, ranks[0], solver, seeds[0])):
        spectrum = None
        if not checks["converged"] and solver.on_unconverged == "exact":
            basis, spectrum = exact_basis(problem, ranks[0], subspace, seed, dtype)
            checks["solver"] = "exact (randomized did not converge)"
        elif want_spectrum:  # eigenvalues only: the telemetry's moment effective rank
            [(values, _)] = eigh_stacked([problem.gram()], vectors=False)
            spectrum = torch.cat([values.new_zeros(problem.dim - values.shape[0]), values.clamp_min(0)])
        out.append((basis, spectrum, checks))
    return out


def solver_summary(checks: dict[str, dict], solver: SolverOptions) -> dict:
    """Counts per solver, the layers whose randomized solve did not converge (and what was done), worst checks."""
    randomized = {name: c for name, c in checks.items() if "angle_bound" in c}
    unconverged = [name for name, c in randomized.items() if not c["converged"]]
    if unconverged:
        action = "re-solved exactly" if solver.on_unconverged == "exact" else "kept as approximate (on_unconverged=warn)"
        log.warning(
            "Astra eigensolver=%s: the randomized top-r solve did not converge (angle estimate > tolerance %g, gap "
            "lam_r/lam_r+1 too small for n_iter=%d) for %d layer(s), %s: %s; raise method.init.n_iter or "
            "oversample to avoid it", solver.eigensolver, solver.tolerance, solver.n_iter, len(unconverged), action,
            ", ".join(f"{name} (gap {randomized[name]['gap']:.4g})" for name in unconverged),
        )  # fmt: skip
    summary = {
        "requested": solver.eigensolver,
        "exact": sum(c["solver"] != "randomized" for c in checks.values()),
        "randomized": sum(c["solver"] == "randomized" for c in checks.values()),
        "unconverged_layers": unconverged,
        "on_unconverged": solver.on_unconverged,
        "retried": sum(bool(c.get("retried")) for c in checks.values()),
    }
    if randomized:
        summary.update(oversample=solver.oversample, retry_oversample=solver.retry_oversample, n_iter=solver.n_iter,
                       tolerance=solver.tolerance,
                       max_residual=max(c["residual"] for c in randomized.values()),
                       max_angle_bound=max(c["angle_bound"] for c in randomized.values()),
                       min_gap=min(c["gap"] for c in randomized.values()))  # fmt: skip
    return summary
