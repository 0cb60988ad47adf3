"""Calibration cost, counted in multiply-adds (machine independent): shared input moments make Astra's pass cheap.

Per token and LLaMA block the shared route adds 4 d^2 multiply-adds to the forward (q/k/v input, o, gate/up input,
down output) plus the per-sample folds (one [B] x [B, d^2] product per input-side layer and batch); the unshared
route adds 7 d^2. Every Gram is accumulated as its block-upper triangle (``gram_blocks``): a fraction (k+1)/2k of
those counts for k blocks (1 at d = 128, 7/12 at d = 768). Wall-clock ratios: experiments/bench/init_cost.py.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode

from astra.calibration.common import forward_extras, lora_targets
from astra.calibration.moment_accumulation import MomentOptions, gram_blocks
from astra.calibration.moments import collect_output_moments
from astra.models.build import tiny_llama

aten = torch.ops.aten
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS, B, T, N = 4, 4, 16, 8
WIDTHS = {128: 344, 768: 2048}  # hidden -> intermediate (LLaMA-like expanding MLP)


class MultiplyAdds(TorchDispatchMode):
    """Counts the multiply-adds of matrix products (mm, addmm, bmm, baddbmm, mv, addmv, in place or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func._overloadpacket
        if packet in (aten.mm, aten.bmm):
            a, b = args[0], args[1]
            self.total += a.numel() * b.shape[-1]
        elif packet in (aten.addmm, aten.addmm_, aten.baddbmm, aten.baddbmm_):
            a, b = args[1], args[2]
            self.total += a.numel() * b.shape[-1]
        elif packet in (aten.mv,):
            self.total += args[0].numel()
        elif packet in (aten.addmv, aten.addmv_):
            self.total += args[1].numel()
        return func(*args, **(kwargs or {}))


def triangle_fraction(dim: int) -> float:
    return sum((stop - begin) * (dim - begin) for begin, stop in gram_blocks(dim)) / dim**2


@pytest.fixture(scope="module", params=sorted(WIDTHS))
def setup(request):
    hidden = request.param
    torch.manual_seed(0)
    base = tiny_llama(vocab_size=256, seed=0, hidden_size=hidden, intermediate_size=WIDTHS[hidden])
    model = get_peft_model(base, LoraConfig(r=8, target_modules=TARGETS))
    ids = torch.randint(3, 256, (N, T))
    rows = [dict(input_ids=ids[i], attention_mask=torch.ones(T, dtype=torch.long)) for i in range(N)]
    loader = torch.utils.data.DataLoader(rows, batch_size=B)
    layers = {name: layer.get_base_layer() for name, layer in lora_targets(model, "default").items()}
    extras = forward_extras(model, need_logits=False)
    counter = MultiplyAdds()
    with counter, torch.no_grad(), model.disable_adapter():  # calibration runs the base model too
        for batch in loader:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extras)
    return model, loader, layers, counter.total, hidden


def extra_per_token_and_block(setup, **options) -> float:
    """Multiply-adds the calibration pass adds to the plain forward, per token and block, in units of d^2."""
    model, loader, layers, forward, hidden = setup
    counter = MultiplyAdds()
    with counter:
        collect_output_moments(model, loader, layers, MomentOptions(**options), cache=False, progress=False)
    return (counter.total - forward) / (N * T * LAYERS * hidden**2)


@pytest.mark.parametrize("normalize", ["signed_max", "none"])
@pytest.mark.parametrize("center,mask_padding", [(False, False), (True, True)])
def test_shared_route_adds_four_d_squared_per_token(setup, normalize, center, mask_padding):
    extra = extra_per_token_and_block(setup, normalize=normalize, center=center, mask_padding=mask_padding)
    fraction = triangle_fraction(setup[-1])
    folds = 5 / T if normalize != "none" else 0  # q, k, v, gate, up fold B per-sample moments per batch
    assert 4 * fraction - 1e-9 <= extra <= (4 + folds) * fraction + 0.05


def test_unshared_route_adds_seven_d_squared_per_token(setup):
    extra = extra_per_token_and_block(setup, share_inputs=False)
    fraction = triangle_fraction(setup[-1])
    assert 7 * fraction - 1e-9 <= extra <= 7 * fraction + 0.05


def test_gram_blocks_cover_the_upper_triangle():
    assert gram_blocks(100) == [(0, 100)] and triangle_fraction(128) == 1
    for dim in (256, 768, 1000, 4096, 11008):
        blocks = gram_blocks(dim)
        assert blocks[0][0] == 0 and blocks[-1][1] == dim
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(stop - begin >= 128 for begin, stop in blocks)
    assert triangle_fraction(768) == pytest.approx(7 / 12) and triangle_fraction(4096) == pytest.approx(9 / 16)
