"""Effective rank / stable rank maths (astra.telemetry.effective_rank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astra.telemetry.effective_rank import (
    dense_ranks,
    dense_singular_values,
    effective_rank,
    lowrank_ranks,
    lowrank_singular_values,
    spectrum_from_eigenvalues,
    stable_rank,
)


def numpy_effective_rank(sv: np.ndarray) -> float:
    p = sv / sv.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("r", [1, 4, 16])
def test_identity_has_full_effective_rank(r):
    sv = dense_singular_values(torch.eye(r, dtype=torch.float64), dtype=torch.float64)
    assert float(effective_rank(sv)) == pytest.approx(r, rel=1e-12)
    assert float(stable_rank(sv)) == pytest.approx(r, rel=1e-12)


def test_rank_one_has_effective_rank_one():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(20, 1, generator=g, dtype=torch.float64), torch.randn(1, 30, generator=g, dtype=torch.float64)
    erank, srank = dense_ranks(u @ v)
    assert float(erank) == pytest.approx(1.0, abs=1e-5)
    assert float(srank) == pytest.approx(1.0, abs=1e-5)
    # As a low-rank product with r = 3 but only one non-zero direction.
    A = torch.cat([v, torch.zeros(2, 30, dtype=torch.float64)])
    B = torch.cat([u, torch.zeros(20, 2, dtype=torch.float64)], dim=1)
    sv = lowrank_singular_values(A, B, 2.0, dtype=torch.float64)
    assert float(effective_rank(sv)) == pytest.approx(1.0, abs=1e-9)


def test_known_spectrum_matches_numpy():
    spectrum = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.0])
    expected = numpy_effective_rank(spectrum)
    assert float(effective_rank(torch.tensor(spectrum))) == pytest.approx(expected, rel=1e-12)
    # Built as a matrix with that spectrum (random orthogonal factors).
    g = torch.Generator().manual_seed(1)
    q1, _ = torch.linalg.qr(torch.randn(10, 6, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(8, 6, generator=g, dtype=torch.float64))
    matrix = q1 @ torch.diag(torch.tensor(spectrum)) @ q2.T
    assert float(dense_ranks(matrix)[0]) == pytest.approx(expected, rel=1e-9)


def test_zero_matrix_has_rank_zero():
    A, B = torch.randn(4, 10), torch.zeros(12, 4)  # a LoRA update at init
    erank, srank = lowrank_ranks(A, B, 2.0)
    assert float(erank) == 0.0 and float(srank) == 0.0


def test_batched_spectra():
    spectra = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert effective_rank(spectra).tolist() == pytest.approx([2.0, 1.0, 0.0])
    assert stable_rank(spectra).tolist() == pytest.approx([2.0, 1.0, 0.0])


@pytest.mark.parametrize("d_out,d_in,r", [(64, 48, 8), (40, 96, 4), (6, 50, 8)])
def test_qr_route_equals_full_svd(d_out, d_in, r):
    g = torch.Generator().manual_seed(d_out + d_in + r)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    s = 0.37
    full = torch.linalg.svdvals(s * B @ A)[: min(r, d_out, d_in)]
    fast = lowrank_singular_values(A, B, s, dtype=torch.float64)
    assert fast.shape == full.shape
    assert float(((fast - full).abs() / full.abs()).max()) < 1e-5
    # float32 compute (the default) agrees to float32 round-off.
    fast32 = lowrank_singular_values(A.float(), B.float(), s)
    assert float((fast32.double() - full).norm() / full.norm()) < 1e-5
    erank_full = numpy_effective_rank(full.numpy())
    assert float(effective_rank(fast)) == pytest.approx(erank_full, rel=1e-5)


def test_qr_route_batched_with_per_item_scaling():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(5, 4, 32, generator=g, dtype=torch.float64)
    B = torch.randn(5, 24, 4, generator=g, dtype=torch.float64)
    scale = torch.tensor([0.5, 1.0, 2.0, -1.0, 3.0], dtype=torch.float64)
    fast = lowrank_singular_values(A, B, scale, dtype=torch.float64)
    for i in range(5):
        full = torch.linalg.svdvals(scale[i] * B[i] @ A[i])[:4]
        assert torch.allclose(fast[i], full, rtol=1e-9)


def test_low_precision_factors_are_upcast():
    A = torch.randn(4, 32).bfloat16()
    B = torch.randn(16, 4).bfloat16()
    fast = lowrank_singular_values(A, B, 1.0)
    full = torch.linalg.svdvals(B.float() @ A.float())[:4]
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, full, rtol=1e-4)


def test_stable_rank_matches_numpy():
    g = torch.Generator().manual_seed(4)
    matrix = torch.randn(30, 20, generator=g, dtype=torch.float64)
    m = matrix.numpy()
    expected = np.linalg.norm(m, "fro") ** 2 / np.linalg.norm(m, 2) ** 2
    assert float(dense_ranks(matrix)[1]) == pytest.approx(expected, rel=1e-10)
    A, B = torch.randn(6, 20, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64)
    m = (0.5 * B @ A).numpy()
    expected = np.linalg.norm(m, "fro") ** 2 / np.linalg.norm(m, 2) ** 2
    assert float(stable_rank(lowrank_singular_values(A, B, 0.5, dtype=torch.float64))) == pytest.approx(expected, rel=1e-9)


def test_spectrum_from_eigenvalues_clamps_round_off():
    eig = torch.tensor([-1e-9, 3.0, 1.0, -2e-12])
    spectrum = spectrum_from_eigenvalues(eig)
    assert spectrum.tolist() == [3.0, 1.0, 0.0, 0.0]
    # A PSD moment matrix X^T X: eigenvalues == singular values.
    x = torch.randn(50, 6, dtype=torch.float64)
    moment = x.T @ x
    from_eig = effective_rank(spectrum_from_eigenvalues(torch.linalg.eigvalsh(moment)))
    assert float(from_eig) == pytest.approx(float(dense_ranks(moment)[0]), rel=1e-9)
