"""Calibration on N ranks gives the statistics of one process: each rank runs its share of the calibration batches
and the running sums are all-reduced (SUM) before they are finalised.

The sharding unit is the batch: rank k runs batches k, k + N, k + 2N, ... of the loader one process would run. Astra's
moments are per-row sums, so any split of the rows would do; LoRA-GA averages per-batch mean losses, so its batches
must be the single process's batches for the mean gradient to be the same. The result equals the single-process one
up to floating-point summation order.

When is there more than one rank at calibration time? Only when the job was launched by ``torchrun`` or an equivalent
launcher that sets ``WORLD_SIZE``, ``RANK`` and ``MASTER_ADDR`` before ``run.py`` starts: :func:`ensure_process_group`
then initialises the process group early, and Lightning's DDP strategy reuses it
(``lightning_fabric.utilities.distributed._init_dist_connection`` returns early when ``torch.distributed`` is already
initialised). Under Lightning's own launcher (``trainer.lightning.devices=N`` from a plain ``python run.py``) the other
ranks start only inside ``trainer.fit``, after the init, so every rank computes the same seeded init on all rows.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Only rank 0 writes shared files (the calibration cache)."""
    return world()[0] == 0


def ensure_process_group() -> bool:
    """Initialise the process group from the launcher's environment when the job has several ranks from its start
    (``WORLD_SIZE`` > 1 and ``MASTER_ADDR`` set); returns whether calibration is then distributed."""
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    log.info("process group initialised for calibration: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_world_size() > 1


def shard_batches(n_batches: int, rank: int, world_size: int) -> list[int]:
    """The batch indices rank ``rank`` runs: every ``world_size``-th from ``rank`` (disjoint, together complete)."""
    if n_batches < world_size:
        raise ValueError(
            f"calibration has {n_batches} batches for {world_size} ranks: every rank needs at least one; "
            "raise method.calibration.n_samples or lower method.calibration.batch_size"
        )
    return list(range(rank, n_batches, world_size))


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """This rank's share of ``loader``'s batches, as a loader over the same dataset and collate function."""
    if world_size == 1:
        return loader
    size, total = int(loader.batch_size), len(loader.dataset)
    batches = shard_batches((total + size - 1) // size, rank, world_size)
    # A partial batch can only be the last of the whole loader, so it stays the last of its rank's share.
    indices = [i for b in batches for i in range(b * size, min((b + 1) * size, total))]
    sharded = DataLoader(Subset(loader.dataset, indices), batch_size=size, collate_fn=loader.collate_fn)
    sharded.dataset.ids = [loader.dataset.ids[i] for i in indices] if hasattr(loader.dataset, "ids") else indices
    sharded.dataset.shard_of = total  # the whole set's size: n_samples checks count this rank's share instead
    return sharded


def all_reduce_sums(tensors: list[torch.Tensor]) -> None:
    """SUM each tensor over the ranks, in place (nothing happens in a single process)."""
    if world()[1] == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_count(count: int, device: Any) -> int:
    """An integer count summed over the ranks."""
    if world()[1] == 1:
        return count
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return int(value.item())
