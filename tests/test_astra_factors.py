"""Astra's factors against an independent float64 eigendecomposition, and init_astra on a tiny PEFT LLaMA."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from peft import LoraConfig, get_peft_model

from astra.calibration.moments import FactoredMoment
from astra.methods.astra import SUBSPACES, astra_basis, astra_factors, init_astra
from astra.methods.base import InitContext
from astra.methods.eigensolvers import random_orthonormal
from astra.models.build import tiny_llama

CONF = Path(__file__).resolve().parents[1] / "conf" / "method" / "astra.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_case(d_out, d_in, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    x = torch.randn(3 * d_out, d_out, generator=g, dtype=torch.float64) * torch.linspace(
        0.2, 3.0, d_out, dtype=torch.float64
    )
    return weight, x.T @ x  # a full-rank moment with well separated eigenvalues


def reference_eigenvectors(moment, columns):
    values, vectors = np.linalg.eigh(moment.numpy())  # LAPACK via numpy: independent of torch.linalg
    return torch.from_numpy(vectors[:, columns])


def largest_principal_angle(basis, reference):
    """sin of the largest principal angle between two orthonormal bases of equal dimension."""
    residual = basis - reference @ (reference.T @ basis)
    return float(torch.linalg.matrix_norm(residual, ord=2))


def columns_for(subspace, d, r):
    return {"top": slice(d - r, d), "bottom": slice(0, r), "middle": slice(d // 2, d // 2 + r)}[subspace]


@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
@pytest.mark.parametrize("subspace", ["top", "bottom", "middle"])
def test_factors_match_float64_eigenvectors(shape, subspace):
    weight, moment = random_case(*shape)
    rank, scaling = 4, 2.5
    lora_a, lora_b, residual = astra_factors(weight, moment, rank, scaling, subspace, dtype=torch.float64)
    assert lora_a.shape == (rank, shape[1]) and lora_b.shape == (shape[0], rank)
    torch.testing.assert_close(lora_b.T @ lora_b, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(lora_a, lora_b.T @ weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(residual + scaling * lora_b @ lora_a, weight, rtol=0, atol=1e-12)
    reference = reference_eigenvectors(moment, columns_for(subspace, shape[0], rank))
    assert largest_principal_angle(lora_b, reference) < 1e-6


def test_float32_maths_and_low_precision_outputs():
    weight, moment = random_case(16, 10)
    lora_a, lora_b, residual = astra_factors(weight.to(torch.bfloat16), moment.float(), 3, 2.0)
    assert lora_a.dtype == lora_b.dtype == residual.dtype == torch.bfloat16
    reference = reference_eigenvectors(moment, slice(13, 16))
    assert largest_principal_angle(lora_b.double(), reference) < 1e-2  # bf16 rounding of B
    a32, b32, r32 = astra_factors(weight.float(), moment.float(), 3, 2.0, factor_dtype=torch.float32)
    assert largest_principal_angle(b32.double(), reference) < 1e-4
    torch.testing.assert_close(r32 + 2.0 * b32 @ a32, weight.float(), rtol=0, atol=1e-5)


def test_random_subspace_is_seeded_and_deterministic():
    weight, moment = random_case(14, 9)
    a1, b1, _ = astra_factors(weight, moment, 3, 1.0, "random", seed=7, dtype=torch.float64)
    a2, b2, _ = astra_factors(weight, moment, 3, 1.0, "random", seed=7, dtype=torch.float64)
    _, b3, _ = astra_factors(weight, moment, 3, 1.0, "random", seed=8, dtype=torch.float64)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.allclose(b1, b3)
    torch.testing.assert_close(b1.T @ b1, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(b1, random_orthonormal(14, 3, 7), rtol=0, atol=0)
    top = reference_eigenvectors(moment, slice(11, 14))
    assert largest_principal_angle(b1, top) > 0.1  # not the eigenvectors


def factored_case(d_out=20, d_in=7, bias=True, seed=3):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_out, d_in + bias, generator=g, dtype=torch.float64)
    x = torch.randn(50, d_in + bias, generator=g, dtype=torch.float64) * torch.linspace(
        0.3, 2.0, d_in + bias, dtype=torch.float64
    )
    inner = x.T @ x / 50
    return FactoredMoment(weight=weight, inner=inner)


@pytest.mark.parametrize("subspace", ["top", "middle"])
def test_factored_moment_gives_the_dense_eigenvectors(subspace):
    moment = factored_case(d_in=13)  # k = 14 < d_out = 20: 6 structural zero eigenvalues, the middle band is nonzero
    dense = moment.dense()
    rank = 4
    basis, spectrum = astra_basis(moment, rank, subspace, dtype=torch.float64)
    reference = reference_eigenvectors(dense, columns_for(subspace, 20, rank))
    assert largest_principal_angle(basis, reference) < 1e-6
    torch.testing.assert_close(spectrum, torch.linalg.eigvalsh(dense).clamp_min(0), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(basis.T @ basis, torch.eye(rank, dtype=torch.float64), rtol=0, atol=1e-12)


def test_expanding_layer_bottom_subspace_gives_zero_a_on_both_routes():
    moment = factored_case(bias=False)
    weight = moment.weight
    for form in (moment, moment.dense()):
        lora_a, lora_b, residual = astra_factors(weight, form, 3, 2.0, "bottom", dtype=torch.float64)
        assert float(lora_a.norm()) < 1e-6 * float(weight.norm())
        torch.testing.assert_close(lora_b.T @ lora_b, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-10)
        torch.testing.assert_close(residual, weight, rtol=0, atol=1e-10)


def test_bad_subspace_rank_and_shape_are_errors():
    weight, moment = random_case(10, 6)
    with pytest.raises(ValueError, match="subspace='tail'.*top"):
        astra_factors(weight, moment, 2, 1.0, "tail")
    for rank in (0, 7):
        with pytest.raises(ValueError, match=f"rank={rank}.*min\\(d_out, d_in\\)=6"):
            astra_factors(weight, moment, rank, 1.0)
    with pytest.raises(ValueError, match="middle"):
        astra_factors(weight, moment, 6, 1.0, "middle")
    with pytest.raises(ValueError, match="d_out x d_out"):
        astra_factors(weight, moment[:6, :6], 2, 1.0)
    with pytest.raises(ValueError, match="float16"):
        astra_factors(weight, moment, 2, 1.0, dtype=torch.float16)


# ----------------------------------------------------------------------------------------- init on a model


def calibration_rows(n=12, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        mask[i, length - (i % 5) * 2 :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return [dict(input_ids=ids[i], attention_mask=mask[i], labels=labels[i]) for i in range(n)]


def peft_llama(seed=0, r=8):
    model = tiny_llama(vocab_size=256, seed=seed)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))


def logits(model, rows):
    batch = torch.utils.data.default_collate(rows[:4])
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def astra_init():
    rows = calibration_rows()
    model = peft_llama()
    model.eval()
    before = logits(model, rows)
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    report = init_astra(model, loader, InitContext(seed=0), n_samples=len(rows), progress=False)
    return model, rows, before, report


def test_init_astra_preserves_logits(astra_init):
    model, rows, before, _ = astra_init
    after = logits(model, rows)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5


def test_init_astra_writes_orthonormal_b_and_reports_spectra(astra_init):
    model, _, _, report = astra_init
    layers = {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {})
    }
    assert len(layers) == report["n_layers"] == 28
    # q/k/v share one input (128 wide) and gate/up another: their moments are accumulated on the input side;
    # o and down (the only readers of their inputs) on the output side
    assert report["routes"] == {"output": 8, "input": 20}
    for name, layer in layers.items():
        b = layer.lora_B["default"].weight.detach()
        torch.testing.assert_close(b.T @ b, torch.eye(8), rtol=0, atol=1e-5)
        base = layer.get_base_layer()
        a = layer.lora_A["default"].weight.detach()
        assert float(a.norm()) > 1e-3
        spectrum = report["_moment_eigenvalues"][name]
        assert (
            spectrum.device.type == "cpu" and spectrum.shape == (base.out_features,) and spectrum.dtype == torch.float32
        )
        assert bool((spectrum[1:] >= spectrum[:-1]).all())
    assert report["zero_A_layers"] == [] and report["n_samples"] == 12


def test_init_astra_bottom_warns_once_about_expanding_layers(caplog):
    rows = calibration_rows(8)
    model = peft_llama()
    before = logits(model.eval(), rows)
    with caplog.at_level(logging.WARNING, logger="astra.methods.astra"):
        report = init_astra(
            model, torch.utils.data.DataLoader(rows, batch_size=8), InitContext(), subspace="bottom", progress=False
        )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "A = B^T W is zero" in r.getMessage()]
    assert len(warnings) == 1
    expanding = [name for name in report["zero_A_layers"]]
    assert len(expanding) == 8 and all(name.endswith(("gate_proj", "up_proj")) for name in expanding)
    assert all(name in warnings[0].getMessage() for name in expanding)
    after = logits(model, rows)
    assert float((after - before).abs().max() / before.abs().max()) < 1e-5


def test_init_astra_routes_agree_and_cache_reuses_statistics(tmp_path):
    rows = calibration_rows(8)
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    context = InitContext(
        seed=1, cache_dir=tmp_path, cache_key={"model": "tiny", "task": "t", "sample_ids": list(range(8))}
    )
    factors = {}
    for route, expected_cache in (("output", "miss"), ("auto", "miss"), ("auto", "hit")):
        model = peft_llama()
        report = init_astra(model, loader, context, route=route, dtype="float64", progress=False)
        assert report["cache"] == expected_cache
        factors[(route, expected_cache)] = {
            name: module.lora_B["default"].weight.double()
            for name, module in model.named_modules()
            if name.endswith("up_proj") and hasattr(module, "lora_B")
        }
    for name, b_output in factors[("output", "miss")].items():
        b_input = factors[("auto", "miss")][name]
        assert largest_principal_angle(b_input, b_output) < 1e-4  # float32 factors of float64 maths
        assert torch.equal(factors[("auto", "hit")][name], b_input)


@pytest.mark.parametrize("subspace", ["top", "random"])
def test_stacked_eigh_batches_give_identical_factors(subspace):
    rows = calibration_rows(8)
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    written, reports = {}, {}
    for eigh_batch in (1, 3, 64):
        model = peft_llama()
        reports[eigh_batch] = init_astra(
            model, loader, InitContext(seed=2), subspace=subspace, eigh_batch=eigh_batch, cache=False, progress=False
        )
        written[eigh_batch] = {name: p.detach().clone() for name, p in model.named_parameters() if "proj" in name}
    # all 28 eigenproblems are 128 x 128 (q/k/v/o/down dense, gate/up factored with k = d_in = 128): 28, 10, 1 calls
    assert [reports[b]["eigh_calls"] for b in (1, 3, 64)] == [28, 10, 1]
    for eigh_batch in (3, 64):
        for name, value in written[1].items():
            assert torch.equal(written[eigh_batch][name], value), name
        for name, spectrum in reports[1]["_moment_eigenvalues"].items():
            assert torch.equal(reports[eigh_batch]["_moment_eigenvalues"][name], spectrum)


def test_shared_and_unshared_calibration_give_the_same_init():
    rows = calibration_rows(8)
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    factors = {}
    for share in ("auto", False):
        model = peft_llama()
        report = init_astra(model, loader, InitContext(seed=0), share_inputs=share, dtype="float64", progress=False)
        assert report["routes"] == ({"output": 8, "input": 20} if share == "auto" else {"output": 20, "input": 8})
        factors[share] = {
            name: module.lora_B["default"].weight.double()
            for name, module in model.named_modules()
            if hasattr(module, "lora_B") and "default" in module.lora_B
        }
    for name, b_unshared in factors[False].items():
        assert largest_principal_angle(factors["auto"][name], b_unshared) < 1e-4, name  # float32 factors


def test_method_yaml_instantiates_init_with_known_options(tmp_path):
    from conftest import compose_config

    cfg = compose_config(tmp_path, ["method=astra"]).method  # composed: n_samples interpolates calibration_samples
    assert cfg.name == "astra" and cfg.calibration.n_samples == 64 and cfg.peft.use_rslora is False
    init = instantiate(cfg.init)
    assert init.func is init_astra
    accepted = inspect.signature(init_astra).parameters
    assert set(init.keywords) <= set(accepted)
    assert init.keywords["subspace"] in SUBSPACES
    defaults = {name: p.default for name, p in accepted.items() if p.default is not inspect.Parameter.empty}
    for key in ("subspace", "normalize", "center", "mask_padding", "dtype"):
        assert init.keywords[key] == defaults[key]  # the YAML's defaults are the function's (the reference code's)
