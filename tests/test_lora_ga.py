"""LoRA-GA: the factors against a float64 reference of the official formula, the gradient engine against autograd."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from peft import LoraConfig, get_peft_model

from astra.calibration.gradients import collect_weight_gradients
from astra.methods.base import InitContext
from astra.methods.lora_ga import init_lora_ga, lora_ga_factors
from astra.models.build import tiny_llama

CONF = Path(__file__).resolve().parents[1] / "conf" / "method" / "lora_ga.yaml"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orthonormal(rows, cols, generator):
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))[0]


def known_gradient(d_out=24, d_in=16, seed=0):
    """G = U diag(s) V^T with chosen orthonormal U, V and well separated singular values."""
    g = torch.Generator().manual_seed(seed)
    u, v = orthonormal(d_out, d_in, g), orthonormal(d_in, d_in, g)
    singular = 10.0 * 0.6 ** torch.arange(d_in, dtype=torch.float64)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * 0.1
    return weight, u @ torch.diag(singular) @ v.T


def align_signs(actual, expected, dim):
    """Flip each singular vector of ``actual`` (rows: dim=1, columns: dim=0) to the sign of ``expected``."""
    signs = torch.sign((actual * expected).sum(dim=dim, keepdim=True))
    return actual * signs


def test_factors_equal_float64_reference_of_the_official_formula():
    weight, grad = known_gradient()
    rank, gamma, scaling = 3, 16, 16 / 3**0.5  # rsLoRA: alpha / sqrt(r)
    lora_a, lora_b, residual = lora_ga_factors(weight.float(), grad.float(), rank, scaling, gamma=gamma, seed=0)
    # the official formula in float64 with an exact SVD: A = V[:, :r]^T, B = U[:, r:2r], both * d_out^(1/4)/sqrt(gamma)
    u, _, vh = torch.linalg.svd(grad, full_matrices=False)
    scale = 24**0.25 / gamma**0.5
    expected_a, expected_b = vh[:rank] * scale, u[:, rank : 2 * rank] * scale
    assert lora_a.shape == (rank, 16) and lora_b.shape == (24, rank) and lora_a.dtype == torch.float32
    torch.testing.assert_close(align_signs(lora_a.double(), expected_a, 1), expected_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(align_signs(lora_b.double(), expected_b, 0), expected_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        residual.double(), weight - scaling * lora_b.double() @ lora_a.double(), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(residual + scaling * lora_b @ lora_a, weight.float(), rtol=0, atol=1e-5)


def test_factors_are_bit_identical_for_a_seed_and_follow_the_weight_dtype():
    weight, grad = known_gradient(40, 32, seed=1)
    grad = grad + 1e-3 * torch.randn(40, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    first = lora_ga_factors(weight.float(), grad.float(), 4, 2.0, seed=5, niter=1)
    again = lora_ga_factors(weight.float(), grad.float(), 4, 2.0, seed=5, niter=1)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    low = lora_ga_factors(weight.bfloat16(), grad.float(), 4, 2.0, seed=5)
    assert all(t.dtype == torch.bfloat16 for t in low)


def test_rank_and_shape_errors():
    weight, grad = known_gradient(10, 8)
    with pytest.raises(ValueError, match="2\\*rank"):
        lora_ga_factors(weight, grad, 5, 1.0)
    with pytest.raises(ValueError, match="shape"):
        lora_ga_factors(weight, grad[:, :4], 2, 1.0)


# ----------------------------------------------------------------------------------------- on a model


def calibration_rows(n=8, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        mask[i, length - (i % 4) :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # prompt positions
    return [dict(input_ids=ids[i], attention_mask=mask[i], labels=labels[i]) for i in range(n)]


def peft_llama(seed=0):
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, use_rslora=True)
    return get_peft_model(tiny_llama(vocab_size=256, seed=seed), config)


def test_engine_gradient_equals_manual_autograd_mean():
    rows = calibration_rows()
    loader = torch.utils.data.DataLoader(rows, batch_size=3)  # batches of 3, 3, 2
    model = peft_llama()
    layers = {
        name: module.get_base_layer()
        for name, module in model.named_modules()
        if name.endswith(("q_proj", "down_proj")) and hasattr(module, "lora_A")
    }
    result = collect_weight_gradients(model, loader, layers, dtype="float64", progress=False)
    assert result.n_batches == 3 and result.n_samples == 8

    base = tiny_llama(vocab_size=256, seed=0)  # an identical, un-adapted model
    modules = dict(base.named_modules())
    weights = {name: modules[name.removeprefix("base_model.model.")].weight for name in layers}
    expected = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in weights.items()}
    for batch in loader:
        loss = base(**batch).loss
        grads = torch.autograd.grad(loss, list(weights.values()))
        for name, grad in zip(weights, grads, strict=True):
            expected[name] += grad.double() / 3
    for name in layers:
        torch.testing.assert_close(result.stats[name], expected[name], rtol=1e-5, atol=1e-8)
        assert float(expected[name].norm()) > 0


def layer_state(model):
    return (
        [m.training for m in model.modules()],
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    )


def test_init_preserves_logits_restores_state_and_is_deterministic():
    rows = calibration_rows()
    loader = torch.utils.data.DataLoader(rows, batch_size=2)
    factors = []
    for _ in range(2):
        model = peft_llama()
        model.eval()
        before_state = layer_state(model)
        batch = torch.utils.data.default_collate(rows[:4])
        with torch.no_grad():
            before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        report = init_lora_ga(model, loader, InitContext(seed=3), n_samples=8, progress=False)
        assert layer_state(model) == before_state  # eval mode, requires_grad, no stray .grad
        with torch.no_grad():
            after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert float((after - before).abs().max() / before.abs().max()) < 1e-5
        assert report["n_layers"] == 28 and report["n_batches"] == 4 and report["use_rslora"] is True
        layers = {
            n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
        }
        for layer in layers.values():
            b = layer.lora_B["default"].weight.detach()
            d_out = b.shape[0]
            # B = U[:, r:2r] * d_out^(1/4)/sqrt(16): orthogonal columns of norm d_out^(1/4)/4
            torch.testing.assert_close(b.T @ b, torch.eye(4) * d_out**0.5 / 16, rtol=0, atol=1e-5)
        factors.append(
            {
                n: (m.lora_A["default"].weight.detach().clone(), m.lora_B["default"].weight.detach().clone())
                for n, m in layers.items()
            }
        )
    for name, (a, b) in factors[0].items():
        assert torch.equal(a, factors[1][name][0]) and torch.equal(b, factors[1][name][1])


def test_gradient_engine_restores_state_after_error():
    rows = calibration_rows()

    class Failing(torch.utils.data.DataLoader):
        def __iter__(self):
            for index, batch in enumerate(super().__iter__()):
                if index == 1:
                    raise RuntimeError("mid-calibration failure")
                yield batch

    model = peft_llama()
    model.train()
    before = layer_state(model)
    with pytest.raises(RuntimeError, match="mid-calibration"):
        init_lora_ga(model, Failing(rows, batch_size=2), InitContext(), progress=False)
    assert layer_state(model) == before
    hooks = [p for p in model.parameters() if getattr(p, "_post_accumulate_grad_hooks", None)]
    assert hooks == []
    assert not any(layer._disable_adapters for layer in model.modules() if hasattr(layer, "_disable_adapters"))


def test_layers_per_pass_and_offload_give_the_same_gradients():
    rows = calibration_rows()
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    model = peft_llama()
    layers = {
        name: module.get_base_layer()
        for name, module in model.named_modules()
        if name.endswith(("v_proj", "up_proj")) and hasattr(module, "lora_A")
    }
    one = collect_weight_gradients(model, loader, layers, progress=False)
    grouped = collect_weight_gradients(model, loader, layers, layers_per_pass=3, offload_to_cpu=True, progress=False)
    for name in layers:
        torch.testing.assert_close(grouped.stats[name], one.stats[name], rtol=1e-6, atol=1e-9)


def test_method_yaml_instantiates_init_with_known_options(tmp_path):
    from conftest import compose_config

    cfg = compose_config(tmp_path, ["method=lora_ga"]).method  # composed: n_samples interpolates calibration_samples
    assert cfg.name == "lora_ga" and cfg.peft.use_rslora is True
    assert cfg.calibration.n_samples % cfg.calibration.batch_size == 0
    init = instantiate(cfg.init)
    assert init.func is init_lora_ga
    assert set(init.keywords) <= set(inspect.signature(init_lora_ga).parameters)
    assert init.keywords["gamma"] == 16 and init.keywords["niter"] == 4
