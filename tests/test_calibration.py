"""The calibration engine against statistics computed by hand from materialised outputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from astra.calibration.common import NonFiniteStatisticsError, preserve_model_state
from astra.calibration.gradients import collect_weight_gradients
from astra.calibration.moment_accumulation import MomentOptions
from astra.calibration.moments import collect_output_moments
from astra.methods.base import InitContext

VOCAB, T = 40, 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Toy(nn.Module):
    """Embedding -> expanding Linear (bias) -> tanh -> contracting Linear -> mean-pool -> Linear on [B, d] rows."""

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, 5)
        self.up = nn.Linear(5, 9, bias=True)
        self.down = nn.Linear(9, 4, bias=False)
        self.side = nn.Linear(5, 9, bias=False)  # reads the same tensor as `up`
        self.pool = nn.Linear(4, 3, bias=True)
        self.to(dtype)

    def hidden(self, input_ids):
        h = self.emb(input_ids)
        return h, self.up(h), self.side(h)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h, u, s = self.hidden(input_ids)
        d = self.down(torch.tanh(u) + 0.1 * s)
        pooled = self.pool(d.mean(1))
        return {"logits": pooled, "loss": None if labels is None else pooled.square().mean()}

    def outputs(self, input_ids):
        """Every hooked layer's output, materialised: {name: [N, positions, d]}."""
        h, u, s = self.hidden(input_ids)
        d = self.down(torch.tanh(u) + 0.1 * s)
        return {"up": u, "side": s, "down": d, "pool": self.pool(d.mean(1))[:, None, :]}


def make_data(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    for i in range(n):
        mask[i, T - (i % 4) :] = 0  # right padding of 0..3 positions
    labels = ids.masked_fill(mask == 0, -100)
    return [dict(input_ids=ids[i], attention_mask=mask[i], labels=labels[i]) for i in range(n)]


def loader(rows, batch_size):
    return torch.utils.data.DataLoader(rows, batch_size=batch_size)


def layers_of(model):
    return {name: getattr(model, name) for name in ("up", "side", "down", "pool")}


def reference_moment(y, mask, normalize, center, mask_padding):
    """The statistic's definition, sample by sample, in float64."""
    y = y.double()
    total, first, count = 0, 0, 0
    for n in range(y.shape[0]):
        rows = y[n]
        if mask_padding and rows.shape[0] == mask.shape[1]:
            rows = rows[mask[n].bool()]
        scale = {"signed_max": rows.max().abs(), "abs_max": rows.abs().max(), "none": torch.tensor(1.0)}[normalize]
        z = rows / scale
        total = total + z.T @ z
        first = first + z.sum(0)
        count += z.shape[0]
    if center:
        total = total - torch.outer(first, first) / count
    return total / y.shape[0]


def dense(result, model, name):
    layer = getattr(model, name)
    return result.stats[name].dense(layer.weight, layer.bias)


@pytest.mark.parametrize(
    "normalize,center,mask_padding",
    list(itertools.product(("signed_max", "abs_max", "none"), (False, True), (False, True))),
)
def test_moments_equal_direct_computation(normalize, center, mask_padding):
    model, rows = Toy(), make_data()
    options = MomentOptions(normalize=normalize, center=center, mask_padding=mask_padding, dtype="float64")
    result = collect_output_moments(model, loader(rows, 5), layers_of(model), options, progress=False)
    ids = torch.stack([r["input_ids"] for r in rows])
    mask = torch.stack([r["attention_mask"] for r in rows])
    with torch.no_grad():
        outputs = model.outputs(ids)
    assert result.n_samples == len(rows) and result.stats["up"].route == "input"
    assert result.stats["down"].route == "output"
    for name, y in outputs.items():
        expected = reference_moment(y, mask, normalize, center, mask_padding)
        torch.testing.assert_close(dense(result, model, name), expected, rtol=1e-10, atol=1e-12, msg=name)


def test_batch_size_does_not_change_moments_with_mask_padding():
    model, rows = Toy(), make_data(16)
    options = MomentOptions(mask_padding=True, dtype="float64")
    one = collect_output_moments(model, loader(rows, 1), layers_of(model), options, progress=False)
    eight = collect_output_moments(model, loader(rows, 8), layers_of(model), options, progress=False)
    for name in layers_of(model):
        torch.testing.assert_close(dense(one, model, name), dense(eight, model, name), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("center,mask_padding", [(False, False), (True, True)])
def test_output_and_input_routes_agree(center, mask_padding):
    model, rows = Toy(), make_data()
    layers = {name: getattr(model, name) for name in ("up", "side", "down")}
    results = {
        route: collect_output_moments(
            model,
            loader(rows, 4),
            layers,
            MomentOptions(center=center, mask_padding=mask_padding, dtype="float64", route=route),
            progress=False,
        )
        for route in ("output", "input")
    }
    for name in layers:
        assert results["output"].stats[name].matrix.shape == (getattr(model, name).out_features,) * 2
        assert results["input"].stats[name].route == "input"
        torch.testing.assert_close(
            dense(results["input"], model, name), dense(results["output"], model, name), rtol=1e-10, atol=1e-12
        )


def test_layers_reading_one_input_share_input_moments():
    model, rows = Toy(), make_data()
    layers = {name: getattr(model, name) for name in ("up", "side")}
    shared = collect_output_moments(
        model, loader(rows, 4), layers, MomentOptions(normalize="none", route="input", dtype="float64"), progress=False
    )
    separate = collect_output_moments(
        model,
        loader(rows, 4),
        layers,
        MomentOptions(normalize="none", route="input", dtype="float64", share_inputs=False),
        progress=False,
    )
    assert shared.stats["side"].source == "up" and separate.stats["side"].source == "side"
    for name in layers:
        torch.testing.assert_close(dense(shared, model, name), dense(separate, model, name), rtol=1e-12, atol=1e-14)


def test_layers_per_pass_equals_one_pass_and_exact_n_samples():
    model, rows = Toy(), make_data(10)
    options = MomentOptions(center=True, dtype="float64")
    single = collect_output_moments(model, loader(rows, 3), layers_of(model), options, n_samples=7, progress=False)
    grouped = collect_output_moments(
        model,
        loader(rows, 3),
        layers_of(model),
        options,
        n_samples=7,
        layers_per_pass=1,
        offload_to_cpu=True,
        progress=False,
    )
    assert single.n_samples == grouped.n_samples == 7
    first7 = collect_output_moments(model, loader(rows[:7], 7), layers_of(model), options, progress=False)
    for name in layers_of(model):
        torch.testing.assert_close(dense(grouped, model, name), dense(single, model, name), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dense(first7, model, name), dense(single, model, name), rtol=1e-12, atol=1e-14)


def test_float32_model_accumulates_in_requested_dtype():
    model, rows = Toy(dtype=torch.float32), make_data()
    result = collect_output_moments(
        model, loader(rows, 4), layers_of(model), MomentOptions(dtype="float64"), progress=False
    )
    assert all(stat.matrix.dtype == torch.float64 for stat in result.stats.values())


class Boom(RuntimeError):
    pass


def failing_loader(rows, fail_at=1):
    class Failing(torch.utils.data.DataLoader):
        def __iter__(self):
            for index, batch in enumerate(super().__iter__()):
                if index == fail_at:
                    raise Boom("mid-calibration failure")
                yield batch

    return Failing(rows, batch_size=4)


def snapshot(model):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        [len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters()],
    )


@pytest.mark.parametrize("engine", ["moments", "gradients"])
def test_hooks_modes_and_requires_grad_restored_after_an_error(engine):
    model = Toy()
    model.train()
    model.up.eval()
    model.emb.weight.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(Boom):
        if engine == "moments":
            collect_output_moments(model, failing_loader(make_data()), layers_of(model), progress=False)
        else:
            collect_weight_gradients(model, failing_loader(make_data()), {"up": model.up}, progress=False)
    assert snapshot(model) == before
    assert model.up.weight.grad is None


def test_preserve_model_state_restores_on_exception():
    model = Toy()
    before = snapshot(model)
    with pytest.raises(Boom), preserve_model_state(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        raise Boom()
    assert snapshot(model) == before


def test_nan_statistics_name_the_layer():
    model = Toy()
    with torch.no_grad():
        model.side.weight[0, 0] = float("nan")
    layers = {"up": model.up, "side": model.side}
    with pytest.raises(NonFiniteStatisticsError, match="'side'"):
        collect_output_moments(model, loader(make_data(), 4), layers, progress=False)


def test_too_few_samples_is_an_error():
    model = Toy()
    with pytest.raises(ValueError, match="n_samples=20.*only 12"):
        collect_output_moments(model, loader(make_data(12), 4), layers_of(model), n_samples=20, progress=False)
    with pytest.raises(ValueError, match="only 12"):
        collect_weight_gradients(model, loader(make_data(12), 4), {"up": model.up}, n_samples=13, progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        collect_output_moments(model, None, layers_of(model), progress=False)


def test_unknown_options_are_errors():
    with pytest.raises(ValueError, match="normalize='max'"):
        MomentOptions(normalize="max")
    with pytest.raises(ValueError, match="route='both'"):
        MomentOptions(route="both")
    with pytest.raises(ValueError, match="float16"):
        MomentOptions(dtype="float16")


class CountingLoader(torch.utils.data.DataLoader):
    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def test_cache_hits_on_same_key_and_misses_when_task_or_option_changes(tmp_path):
    model, rows = Toy(), make_data()
    ids = list(range(len(rows)))

    def run(task="gsm8k", normalize="signed_max"):
        context = InitContext(cache_dir=tmp_path, cache_key={"model": "toy", "task": task, "sample_ids": ids})
        return collect_output_moments(
            model,
            CountingLoader(rows, batch_size=4),
            layers_of(model),
            MomentOptions(normalize=normalize, dtype="float64"),
            context=context,
            n_samples=len(rows),
            progress=False,
        )

    CountingLoader.iterations = 0
    first = run()
    assert first.cache == "miss" and CountingLoader.iterations == 1
    again = run()
    assert again.cache == "hit" and CountingLoader.iterations == 1 and again.cache_file == first.cache_file
    for name in layers_of(model):
        torch.testing.assert_close(dense(again, model, name), dense(first, model, name), rtol=0, atol=0)
    other_task = run(task="math")
    other_option = run(normalize="abs_max")
    assert other_task.cache == other_option.cache == "miss" and CountingLoader.iterations == 3
    assert len({first.cache_file, other_task.cache_file, other_option.cache_file}) == 3
    no_cache_dir = collect_output_moments(
        model, loader(rows, 4), layers_of(model), progress=False, context=InitContext()
    )
    assert no_cache_dir.cache == "off"


def test_gradient_cache_key_includes_batch_size(tmp_path):
    model, rows = Toy(), make_data()
    context = InitContext(cache_dir=tmp_path, cache_key={"model": "toy", "task": "t"})
    kwargs = dict(context=context, progress=False)
    first = collect_weight_gradients(model, loader(rows, 4), {"up": model.up}, **kwargs)
    hit = collect_weight_gradients(model, loader(rows, 4), {"up": model.up}, **kwargs)
    other = collect_weight_gradients(model, loader(rows, 6), {"up": model.up}, **kwargs)
    assert (first.cache, hit.cache, other.cache) == ("miss", "hit", "miss")
    torch.testing.assert_close(hit.stats["up"], first.stats["up"], rtol=0, atol=0)
    assert hit.n_batches == first.n_batches == 3


class FlatToy(Toy):
    """`up` sees the tokens flattened to [B*T, d] (as some MoE / packed implementations do)."""

    def hidden(self, input_ids):
        h = self.emb(input_ids)
        flat = self.up(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:2], -1)
        return h, flat, self.side(h)


def test_flattened_token_outputs_are_split_back_into_samples():
    model, rows = FlatToy(), make_data()
    options = MomentOptions(mask_padding=True, center=True, dtype="float64")
    result = collect_output_moments(model, loader(rows, 5), {"up": model.up}, options, progress=False)
    ids = torch.stack([r["input_ids"] for r in rows])
    mask = torch.stack([r["attention_mask"] for r in rows])
    with torch.no_grad():
        expected = reference_moment(model.outputs(ids)["up"], mask, "signed_max", True, True)
    torch.testing.assert_close(dense(result, model, "up"), expected, rtol=1e-10, atol=1e-12)


def test_gradient_engine_names_starved_and_non_finite_layers():
    model = Toy()
    model.extra = nn.Linear(3, 3).double()  # not used by the loss
    with pytest.raises(RuntimeError, match="'extra'"):
        collect_weight_gradients(model, loader(make_data(), 4), {"up": model.up, "extra": model.extra}, progress=False)
    with torch.no_grad():
        model.down.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteStatisticsError, match="'up'"):
        collect_weight_gradients(model, loader(make_data(), 4), {"up": model.up}, progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_moments_equal_cpu_moments():
    rows = make_data()
    options = MomentOptions(center=True, mask_padding=True, dtype="float64")
    cpu, gpu = Toy(), Toy().cuda()
    on_cpu = collect_output_moments(cpu, loader(rows, 4), layers_of(cpu), options, progress=False)
    on_gpu = collect_output_moments(gpu, loader(rows, 4), layers_of(gpu), options, offload_to_cpu=True, progress=False)
    for name in layers_of(cpu):
        assert on_gpu.stats[name].matrix.device.type == "cpu"
        torch.testing.assert_close(dense(on_gpu, gpu, name).cpu(), dense(on_cpu, cpu, name), rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_hooks_do_not_synchronise(monkeypatch):
    import astra.calibration.moment_pass as moment_pass

    def synchronisation_is_an_error(fn):
        def strict(*args, **kwargs):
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return strict

    rows = make_data()
    cpu, gpu = Block(bias=True), Block(bias=True).cuda()
    gpu.forward = synchronisation_is_an_error(gpu.forward)
    monkeypatch.setattr(moment_pass.PassState, "fold", synchronisation_is_an_error(moment_pass.PassState.fold))
    options = MomentOptions(center=True, mask_padding=True, dtype="float64")
    on_cpu = collect_output_moments(cpu, loader(rows, 4), block_layers(cpu), options, progress=False)
    on_gpu = collect_output_moments(gpu, loader(rows, 4), block_layers(gpu), options, progress=False)
    for name in BLOCK_LAYERS:
        torch.testing.assert_close(dense(on_gpu, gpu, name).cpu(), dense(on_cpu, cpu, name), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------- shared per-sample input moments


class Block(nn.Module):
    """A LLaMA-like block: q/k/v read one tensor, gate/up another (expanding), o and down their own."""

    def __init__(self, bias: bool, seed: int = 0, d: int = 6, f: int = 10) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(VOCAB, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=bias) for _ in range(4))
        self.gate, self.up = nn.Linear(d, f, bias=bias), nn.Linear(d, f, bias=bias)
        self.down = nn.Linear(f, d, bias=bias)
        self.double()

    def forward(self, input_ids, attention_mask=None, labels=None):
        return {"logits": self.outputs(input_ids)["down"]}

    def outputs(self, input_ids):
        h = self.emb(input_ids)
        q, k, v = self.q(h), self.k(h), self.v(h)
        o = self.o(torch.tanh(q) * k.sigmoid() + v)
        h2 = h + o
        gate, up = self.gate(h2), self.up(h2)
        down = self.down(nn.functional.silu(gate) * up)
        return {"q": q, "k": k, "v": v, "o": o, "gate": gate, "up": up, "down": down}


BLOCK_LAYERS = ("q", "k", "v", "o", "gate", "up", "down")


def block_layers(model):
    return {name: getattr(model, name) for name in BLOCK_LAYERS}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "normalize,center,mask_padding",
    list(itertools.product(("signed_max", "abs_max", "none"), (False, True), (False, True))),
)
def test_shared_and_unshared_input_moments_agree(normalize, center, mask_padding, bias):
    model, rows = Block(bias), make_data(11)
    ids = torch.stack([r["input_ids"] for r in rows])
    mask = torch.stack([r["attention_mask"] for r in rows])
    with torch.no_grad():
        outputs = model.outputs(ids)
    results = {}
    for share in ("auto", True, False):
        options = MomentOptions(
            normalize=normalize, center=center, mask_padding=mask_padding, dtype="float64", share_inputs=share
        )
        results[share] = collect_output_moments(model, loader(rows, 4), block_layers(model), options, progress=False)
    shared, unshared = results["auto"], results[False]
    # auto: q/k/v share one per-sample input moment, gate/up another; o and down stay on the output side
    assert {n: shared.stats[n].route for n in BLOCK_LAYERS} == dict.fromkeys(BLOCK_LAYERS[:3], "input") | {
        "o": "output",
        "gate": "input",
        "up": "input",
        "down": "output",
    }
    assert [shared.stats[n].source for n in BLOCK_LAYERS] == ["q", "q", "q", "o", "gate", "gate", "down"]
    # unshared: the per-layer route (input side only where d_in [+1] < d_out)
    assert [unshared.stats[n].route for n in ("q", "gate")] == ["output", "input"]
    assert unshared.stats["up"].source == "up"
    for name in BLOCK_LAYERS:
        expected = reference_moment(outputs[name], mask, normalize, center, mask_padding)
        for share, result in results.items():
            torch.testing.assert_close(
                dense(result, model, name), expected, rtol=1e-10, atol=1e-12, msg=f"{name} share={share}"
            )
        torch.testing.assert_close(dense(shared, model, name), dense(unshared, model, name), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("batch_size", [1, 3, 12])
def test_per_sample_chunks_and_batch_sizes_do_not_change_shared_moments(batch_size):
    model, rows = Block(bias=True), make_data(12)
    options = MomentOptions(center=True, mask_padding=True, dtype="float64")
    whole = collect_output_moments(model, loader(rows, 12), block_layers(model), options, progress=False)
    one_sample_chunks = MomentOptions(center=True, mask_padding=True, dtype="float64", sample_chunk_bytes=1)
    chunked = collect_output_moments(
        model, loader(rows, batch_size), block_layers(model), one_sample_chunks, progress=False
    )
    for name in BLOCK_LAYERS:
        assert chunked.stats[name].route == whole.stats[name].route
        torch.testing.assert_close(dense(chunked, model, name), dense(whole, model, name), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("normalize,center,mask_padding", [("signed_max", True, True), ("none", False, False)])
def test_block_triangular_grams_equal_the_definition(monkeypatch, normalize, center, mask_padding):
    """Narrow Gram blocks (d = 6 -> 3 block rows, d = 10 -> 5) on every path: output, shared, common, single."""
    import astra.calibration.moment_accumulation as accumulation

    monkeypatch.setattr(accumulation, "GRAM_BLOCK", 2)
    assert accumulation.gram_blocks(6) == [(0, 2), (2, 4), (4, 6)]
    model, rows = Block(bias=True), make_data()
    ids = torch.stack([r["input_ids"] for r in rows])
    mask = torch.stack([r["attention_mask"] for r in rows])
    with torch.no_grad():
        outputs = model.outputs(ids)
    for share in ("auto", False):
        options = MomentOptions(
            normalize=normalize, center=center, mask_padding=mask_padding, dtype="float64", share_inputs=share
        )
        result = collect_output_moments(model, loader(rows, 5), block_layers(model), options, progress=False)
        for name in BLOCK_LAYERS:
            expected = reference_moment(outputs[name], mask, normalize, center, mask_padding)
            torch.testing.assert_close(dense(result, model, name), expected, rtol=1e-10, atol=1e-12, msg=name)
            matrix = result.stats[name].matrix
            assert torch.equal(matrix, matrix.mT), name  # exactly symmetric


def test_forced_routes_and_share_true():
    model, rows = Block(bias=False), make_data()
    expected = collect_output_moments(
        model, loader(rows, 4), block_layers(model), MomentOptions(dtype="float64", route="output"), progress=False
    )
    assert all(stat.route == "output" for stat in expected.stats.values())
    for route, share in (("input", "auto"), ("input", False), ("auto", True)):
        options = MomentOptions(dtype="float64", route=route, share_inputs=share)
        result = collect_output_moments(model, loader(rows, 4), block_layers(model), options, progress=False)
        inputs = {name for name, stat in result.stats.items() if stat.route == "input"}
        # share_inputs=True shares whatever reads one tensor and leaves single readers on their cheaper side
        assert inputs == (set(BLOCK_LAYERS) if route == "input" else {"q", "k", "v", "gate", "up"})
        for name in BLOCK_LAYERS:
            torch.testing.assert_close(dense(result, model, name), dense(expected, model, name), rtol=1e-10, atol=1e-12)


HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def no_host_reads(fn):
    """``fn`` wrapped so that any read of a tensor value into Python (a device synchronisation) fails."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("a calibration hook read a tensor value on the host")

    def strict(*args, **kwargs):
        with pytest.MonkeyPatch.context() as patch:
            for method in HOST_READS:
                patch.setattr(torch.Tensor, method, refuse)
            return fn(*args, **kwargs)

    return strict


def test_hooks_never_read_tensor_values_on_the_host(monkeypatch):
    """Forward, hooks and group folds must not synchronise with a device: no tensor value reaches Python."""
    import astra.calibration.moment_pass as moment_pass

    model, rows = Block(bias=True), make_data()
    model.forward = no_host_reads(model.forward)  # every hook runs inside the forward
    monkeypatch.setattr(moment_pass.PassState, "fold", no_host_reads(moment_pass.PassState.fold))  # the last group
    for normalize, mask_padding in (("signed_max", True), ("none", False), ("abs_max", False)):
        options = MomentOptions(normalize=normalize, mask_padding=mask_padding, center=True, dtype="float64")
        result = collect_output_moments(model, loader(rows, 4), block_layers(model), options, progress=False)
        assert result.stats["k"].source == "q"
    with pytest.raises(AssertionError, match="host"):  # the guard works
        no_host_reads(lambda: torch.ones(()).item())()


def test_bad_share_inputs_and_chunk_are_errors():
    with pytest.raises(ValueError, match="share_inputs='yes'"):
        MomentOptions(share_inputs="yes")
    with pytest.raises(ValueError, match="sample_chunk_bytes"):
        MomentOptions(sample_chunk_bytes=0)
