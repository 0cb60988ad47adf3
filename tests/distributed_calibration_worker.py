"""Run by tests/test_distributed_calibration.py under `python -m torch.distributed.run --nproc_per_node 2`: each rank
calibrates on its share of the batches (Astra moments, LoRA-GA gradients); rank 0 saves the all-reduced results."""

from __future__ import annotations

import sys

import torch

from astra.calibration.distributed import ensure_process_group, shard_loader, world
from astra.calibration.gradients import collect_weight_gradients
from astra.calibration.moment_accumulation import MomentOptions
from astra.calibration.moments import collect_output_moments


def calibration_setup():
    """The tiny LLaMA with LoRA, 7 calibration rows (padding masks of several lengths) in batches of 2 (the last
    partial): what both the 2-rank run and the single-process reference use."""
    from peft import LoraConfig, get_peft_model

    from astra.data.batches import collate
    from astra.data.datamodule import TokenizedExamples
    from astra.models.build import tiny_llama

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(vocab_size=256, seed=0), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    generator = torch.Generator().manual_seed(0)
    features = []
    for i in range(7):
        length = 12 - (i % 4)
        ids = torch.randint(3, 256, (length,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    dataset = TokenizedExamples(features, list(range(7)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=lambda rows: collate(rows, pad_token_id=0, pad_to=12))
    layers = {name: module.get_base_layer() for name, module in model.named_modules() if hasattr(module, "lora_A")}
    return model, loader, layers


def calibrate(model, loader, layers) -> dict:
    moments = collect_output_moments(model, loader, layers, MomentOptions(dtype="float64"), n_samples=7, progress=False,
                                     cache=False)  # fmt: skip
    gradients = collect_weight_gradients(model, loader, layers, dtype="float64", train_mode=False, n_samples=7,
                                         progress=False, cache=False)  # fmt: skip
    return {"moments": {name: m.matrix for name, m in moments.stats.items()}, "n_tokens": {n: m.n_tokens for n, m in moments.stats.items()},
            "gradients": gradients.stats, "n_batches": gradients.n_batches, "n_rows": gradients.n_samples}  # fmt: skip


def main(out: str) -> None:
    torch.set_num_threads(1)
    assert ensure_process_group(), "WORLD_SIZE and MASTER_ADDR come from torch.distributed.run"
    rank, size = world()
    model, loader, layers = calibration_setup()
    sharded = shard_loader(loader, rank, size)
    results = calibrate(model, sharded, layers)
    results["rank_rows"] = len(sharded.dataset)
    gathered = [None] * size
    torch.distributed.all_gather_object(gathered, results["rank_rows"])
    if rank == 0:
        results["rows_per_rank"] = gathered
        torch.save(results, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
