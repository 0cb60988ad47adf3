"""The eigensolvers against exact float64 eigendecompositions (numpy's LAPACK), and Astra's solver choice, checks
and fallback on a tiny PEFT LLaMA."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from astra.calibration.moments import FactoredMoment
from astra.methods.astra import astra_basis, init_astra
from astra.methods.base import InitContext
from astra.methods.eigensolver_policy import SolverOptions
from astra.methods.eigensolvers import eigen_problem, exact_basis, randomized_top_eigh
from astra.models.build import tiny_llama

SRC = Path(__file__).resolve().parents[1] / "src" / "astra"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def moment_with_spectrum(values: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Q diag(values) Q^T for a seeded random orthogonal Q, float64."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(values), len(values))))
    return torch.from_numpy((q * values) @ q.T)


def gapped_spectrum(dim: int, rank: int, gap: float = 3.0) -> np.ndarray:
    """Decaying eigenvalues with lam_r / lam_{r+1} = gap."""
    tail = np.geomspace(1.0, 1e-3, dim - rank)
    head = np.geomspace(50.0, gap, rank)
    return np.sort(np.concatenate([tail, head]))


def exact_top(moment: torch.Tensor, rank: int) -> torch.Tensor:
    values, vectors = np.linalg.eigh(moment.numpy())
    return torch.from_numpy(vectors[:, -rank:])


def largest_principal_angle(basis: torch.Tensor, reference: torch.Tensor) -> float:
    """sin of the largest principal angle between two orthonormal bases of equal dimension."""
    return float(torch.linalg.matrix_norm(basis - reference @ (reference.T @ basis), ord=2))


def test_randomized_matches_exact_top_eigenvectors_on_gapped_moments():
    dim, rank = 96, 6
    moments = [moment_with_spectrum(gapped_spectrum(dim, rank, gap), seed) for seed, gap in enumerate((3.0, 1.5, 10))]
    top = randomized_top_eigh(torch.stack(moments), rank, oversample=8, n_iter=10, seed=0)
    assert top.vectors.shape == (3, dim, rank) and top.values.shape == (3, rank)
    for index, moment in enumerate(moments):
        exact_values = np.linalg.eigvalsh(moment.numpy())
        basis = top.vectors[index]
        torch.testing.assert_close(basis.T @ basis, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-12)
        assert largest_principal_angle(basis, exact_top(moment, rank)) < 1e-4
        np.testing.assert_allclose(top.values[index].numpy(), exact_values[-rank:], rtol=1e-8)  # ascending, like eigh
        assert float(top.gap[index]) == pytest.approx(exact_values[-rank] / exact_values[-rank - 1], rel=1e-3)
        assert float(top.residual[index]) < 1e-6
        assert float(top.angle_bound[index]) < 1e-4


def test_randomized_on_factors_never_forms_the_output_moment_and_agrees():
    g = torch.Generator().manual_seed(3)
    d_out, k, rank = 80, 24, 4
    weight = torch.randn(d_out, k, generator=g, dtype=torch.float64)
    inner = moment_with_spectrum(gapped_spectrum(k, rank, 4.0), seed=5)
    dense = weight @ inner @ weight.T
    top = randomized_top_eigh(weight, rank, inner=inner, oversample=8, n_iter=6, seed=1)
    assert largest_principal_angle(top.vectors[0], exact_top(dense, rank)) < 1e-4
    np.testing.assert_allclose(top.values[0].numpy(), np.linalg.eigvalsh(dense.numpy())[-rank:], rtol=1e-8)


def test_randomized_is_seeded():
    moment = moment_with_spectrum(gapped_spectrum(40, 3), seed=2)
    a = randomized_top_eigh(moment, 3, n_iter=1, seed=7).vectors
    assert torch.equal(a, randomized_top_eigh(moment, 3, n_iter=1, seed=7).vectors)
    assert not torch.equal(a, randomized_top_eigh(moment, 3, n_iter=1, seed=8).vectors)


def test_no_gap_is_reported_and_falls_back_to_exact():
    dim, rank = 60, 5
    values = np.concatenate([np.geomspace(1e-3, 0.5, dim - 10), np.full(10, 2.0)])  # lam_5 = lam_6 = 2: no gap
    moment = moment_with_spectrum(values, seed=4)
    top = randomized_top_eigh(moment, rank, oversample=4, n_iter=2, seed=0)
    assert float(top.gap[0]) < 1.0 + 1e-4 and float(top.angle_bound[0]) > 1e-3
    solver = SolverOptions("randomized", oversample=4, n_iter=2)
    basis, spectrum = astra_basis(moment, rank, "top", dtype=torch.float64, solver=solver)
    exact, exact_spectrum = exact_basis(eigen_problem(moment, torch.float64), rank, "top", 0, torch.float64)
    assert torch.equal(basis, exact) and torch.equal(spectrum, exact_spectrum)  # the fallback is the exact solve
    kept, none = astra_basis(moment, rank, "top", dtype=torch.float64, solver=SolverOptions("randomized", 4, 2,
                                                                                           on_unconverged="warn"))
    assert none is None and not torch.equal(kept, exact)


def test_a_wider_retry_converges_past_a_cluster_below_the_top_eigenvalues():
    from astra.methods.eigensolver_policy import randomized_bases, solver_summary

    dim, rank = 120, 4
    values = np.concatenate([np.geomspace(1e-3, 0.1, dim - rank - 30), np.linspace(8.0, 9.0, 30),
                             np.geomspace(10.0, 50.0, rank)])  # gap 10 / 9 at r, then 30 eigenvalues near 9 # fmt: skip
    moment = moment_with_spectrum(values, seed=5)
    problem = eigen_problem(moment, torch.float64, form_gram=False)
    narrow = SolverOptions("randomized", oversample=4, n_iter=8)
    [(_, once)] = randomized_bases([problem], rank, narrow, seed=0)
    assert not once["converged"] and once["oversample"] == 4  # a block of 8 ends inside the cluster: slow
    wide = SolverOptions("randomized", oversample=4, n_iter=8, retry_oversample=40)
    [(basis, checks)] = randomized_bases([problem], rank, wide, seed=0)
    assert checks["converged"] and checks["retried"] and checks["oversample"] == 40  # 44 columns reach past it
    assert largest_principal_angle(basis, exact_top(moment, rank)) < 1e-4
    assert solver_summary({"layer": checks}, wide)["retried"] == 1
    kept, spectrum = astra_basis(moment, rank, "top", dtype=torch.float64, solver=wide)
    assert spectrum is None and torch.equal(kept, basis)  # accepted: no exact fallback


def test_astra_basis_randomized_on_a_factored_moment():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 20, generator=g, dtype=torch.float64)
    inner = moment_with_spectrum(gapped_spectrum(20, 3, 5.0), seed=1)
    moment = FactoredMoment(weight=weight, inner=inner)
    basis, spectrum = astra_basis(moment, 3, "top", dtype=torch.float64, solver=SolverOptions("randomized", 8, 6))
    assert spectrum is None
    assert largest_principal_angle(basis, exact_top(moment.dense(torch.float64), 3)) < 1e-4


def test_a_wide_factored_moment_stays_factored_for_randomized_and_is_dense_for_exact(monkeypatch):
    """k >= d_out (o_proj, down_proj on the input route): the randomized solve applies F M F^T without forming it;
    the exact route forms the d_out x d_out moment exactly as a dense moment is (bit for bit)."""
    g = torch.Generator().manual_seed(4)
    d_out, k, rank = 30, 45, 3
    weight = torch.randn(d_out, k, generator=g, dtype=torch.float64)
    inner = moment_with_spectrum(gapped_spectrum(k, rank, 5.0), seed=2)
    moment = FactoredMoment(weight=weight, inner=inner)
    problem = eigen_problem(moment, torch.float64, form_gram=False)
    assert problem.factored and problem.size == d_out and problem.matrix is None
    formed = []
    monkeypatch.setattr(FactoredMoment, "dense", lambda self, dtype=None: formed.append(1) or torch.zeros(1))
    basis, spectrum = astra_basis(moment, rank, "top", dtype=torch.float64, solver=SolverOptions("randomized", 8, 16))
    assert spectrum is None and not formed  # never formed
    monkeypatch.undo()
    assert largest_principal_angle(basis, exact_top(moment.dense(torch.float64), rank)) < 1e-4
    exact, exact_spectrum = exact_basis(problem, rank, "top", 0, torch.float64)
    dense, dense_spectrum = exact_basis(eigen_problem(moment.dense(torch.float64), torch.float64), rank, "top", 0,
                                        torch.float64)  # fmt: skip
    assert not problem.factored and torch.equal(exact, dense) and torch.equal(exact_spectrum, dense_spectrum)


def test_solver_choice_and_bad_options():
    auto = SolverOptions("auto", oversample=16)  # n_iter 16: randomized where 16 (r + 16) <= d
    assert auto.choose("top", 8, 384) == "randomized" and auto.choose("top", 8, 383) == "exact"
    assert auto.choose("top", 32, 576) == "exact" and auto.choose("top", 128, 4096) == "randomized"  # 16 x 144
    few = SolverOptions("auto", oversample=16, n_iter=2)  # at least 4 (r + oversample): the old quarter rule
    assert few.choose("top", 8, 96) == "randomized" and few.choose("top", 8, 95) == "exact"
    assert auto.choose("bottom", 8, 4096) == "exact" and auto.choose("random", 8, 4096) == "exact"
    assert SolverOptions("exact").choose("top", 1, 10**6) == "exact"
    with pytest.raises(ValueError, match="subspace='bottom' needs the exact solver"):
        SolverOptions("randomized").choose("bottom", 8, 4096)
    for kwargs, match in (({"eigensolver": "lanczos"}, "lanczos"), ({"n_iter": -1}, "n_iter=-1"),
                          ({"oversample": 0}, "oversample=0"), ({"tolerance": 2.0}, "tolerance=2.0"),
                          ({"on_unconverged": "ignore"}, "ignore"),
                          ({"oversample": 16, "retry_oversample": 16}, "retry_oversample=16")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            SolverOptions(**kwargs)


def calibration_rows(n=12, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (n, length), generator=g)
    return [dict(input_ids=ids[i], attention_mask=torch.ones(length, dtype=torch.long), labels=ids[i]) for i in range(n)]


def peft_llama(r=4):
    model = tiny_llama(vocab_size=256, seed=0)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))


def adapters(model):
    return {n: m.lora_B["default"].weight.detach().double() for n, m in model.named_modules() if hasattr(m, "lora_B")}


@pytest.mark.parametrize("on_unconverged", ["exact", "warn"])
def test_init_astra_randomized_agrees_with_exact_and_keeps_the_output(on_unconverged, caplog):
    loader = torch.utils.data.DataLoader(calibration_rows(), batch_size=4)
    batch = torch.utils.data.default_collate(calibration_rows()[:2])
    exact_model, model = peft_llama(), peft_llama()
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"]).logits
    exact_report = init_astra(exact_model, loader, InitContext(seed=1), dtype="float64", cache=False, progress=False)
    with caplog.at_level(logging.WARNING, logger="astra.methods.eigensolver_policy"):
        report = init_astra(model, loader, InitContext(seed=1), dtype="float64", eigensolver="randomized", n_iter=8,
                            tolerance=1e-4, on_unconverged=on_unconverged, cache=False, progress=False)  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, before, rtol=1e-5, atol=1e-5)
    summary = report["eigensolver"]
    assert summary["requested"] == "randomized" and summary["exact"] + summary["randomized"] == 28
    unconverged = summary["unconverged_layers"]
    assert all("angle_bound" in report["eigen"][name] for name in report["eigen"])
    exact_b, b = adapters(exact_model), adapters(model)
    for name, checks in report["eigen"].items():
        assert name in exact_report["eigen"] and "gap" in exact_report["eigen"][name]
        if checks["converged"]:
            assert checks["solver"] == "randomized" and checks["residual"] < 1e-4
            assert largest_principal_angle(b[name], exact_b[name]) < 1e-4, name
        elif on_unconverged == "exact":
            assert torch.equal(b[name], exact_b[name]), name
    assert len(unconverged) == sum(not c["converged"] for c in report["eigen"].values())
    if unconverged:
        assert any(unconverged[0] in record.getMessage() for record in caplog.records)


def test_randomized_spectrum_only_when_asked():
    loader = torch.utils.data.DataLoader(calibration_rows(), batch_size=4)
    reports = {}
    for wanted in (False, True):
        reports[wanted] = init_astra(peft_llama(), loader, InitContext(seed=0, moment_spectrum=wanted),
                                     eigensolver="randomized", on_unconverged="warn", cache=False, progress=False)  # fmt: skip
    assert reports[False]["_moment_eigenvalues"] == {}
    assert reports[False]["spectrum"] == {"eigh": 0, "eigvalsh": 0, "none": 28}
    assert reports[True]["spectrum"] == {"eigh": 0, "eigvalsh": 28, "none": 0}
    exact = init_astra(peft_llama(), loader, InitContext(seed=0), cache=False, progress=False)["_moment_eigenvalues"]
    for name, spectrum in reports[True]["_moment_eigenvalues"].items():
        torch.testing.assert_close(spectrum, exact[name], rtol=1e-4, atol=1e-4 * float(exact[name].max()))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["calibration", "telemetry"])
def test_calibration_and_telemetry_never_import_methods(package):
    for path in sorted((SRC / package).glob("*.py")):
        upward = {name for name in imported_modules(path) if name.startswith("astra.methods")}
        assert not upward, f"{path.relative_to(SRC)} imports {sorted(upward)}"


def test_randomized_stops_once_converged():
    moment = moment_with_spectrum(gapped_spectrum(80, 4, 10.0), seed=6)
    early = randomized_top_eigh(moment, 4, oversample=8, n_iter=16, tolerance=1e-6, check_every=2, seed=0)
    assert early.iterations < 16 and float(early.angle_bound[0]) <= 1e-6
    assert largest_principal_angle(early.vectors[0], exact_top(moment, 4)) < 1e-6
    assert randomized_top_eigh(moment, 4, oversample=8, n_iter=16, seed=0).iterations == 16  # no tolerance: all


def test_a_converged_problem_leaves_the_batch_while_a_slow_one_iterates_on():
    dim, rank = 60, 5
    fast = [moment_with_spectrum(gapped_spectrum(dim, rank, 10.0), seed=s) for s in (7, 8)]
    flat = np.concatenate([np.geomspace(1e-3, 0.5, dim - 10), np.full(10, 2.0)])  # lam_5 = lam_6: never converges
    batch = torch.stack([fast[0], moment_with_spectrum(flat, seed=9), fast[1]])
    top = randomized_top_eigh(batch, rank, oversample=4, n_iter=16, tolerance=1e-6, seed=0)
    assert top.iterations.tolist()[1] == 16 and max(top.iterations.tolist()[::2]) < 16
    assert float(top.angle_bound[1]) > 1e-3
    for k, moment in ((0, fast[0]), (2, fast[1])):  # each stored at its own convergence, in its own row
        assert float(top.angle_bound[k]) <= 1e-6
        assert largest_principal_angle(top.vectors[k], exact_top(moment, rank)) < 1e-6
        values = torch.linalg.eigvalsh(moment)[-rank:]
        assert torch.allclose(top.values[k], values, rtol=1e-9)
