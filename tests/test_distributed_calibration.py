"""Calibration on 2 ranks (gloo, CPU) gives the statistics of one process: Astra's moments and LoRA-GA's gradients,
each rank running its share of the batches, the sums all-reduced."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from astra.calibration.distributed import shard_batches

sys.path.insert(0, str(ROOT / "tests"))
from distributed_calibration_worker import calibrate, calibration_setup  # noqa: E402


def test_shard_batches_are_disjoint_and_complete():
    for n, world in ((4, 2), (7, 3), (5, 5)):
        shards = [shard_batches(n, rank, world) for rank in range(world)]
        assert sorted(b for shard in shards for b in shard) == list(range(n))
    with pytest.raises(ValueError, match="3 batches for 4 ranks: every rank needs at least one"):
        shard_batches(3, 0, 4)


def test_two_ranks_give_the_single_process_statistics(tmp_path):
    out = tmp_path / "two_ranks.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "distributed_calibration_worker.py"), str(out)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    assert two["rows_per_rank"] == [4, 3]  # batches 0, 2 (2 + 2 rows) and 1, 3 (2 + 1 rows)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): a float32 matmul's rounding depends on its blocking
    try:
        one = calibrate(*calibration_setup())
    finally:
        torch.set_num_threads(threads)
    assert two["n_batches"] == one["n_batches"] == 4 and two["n_rows"] == one["n_rows"] == 7
    for name, moment in one["moments"].items():
        torch.testing.assert_close(two["moments"][name], moment, rtol=1e-9, atol=1e-12)
        assert two["n_tokens"][name] == one["n_tokens"][name]
    for name, gradient in one["gradients"].items():
        torch.testing.assert_close(two["gradients"][name], gradient, rtol=1e-9, atol=1e-12)
        assert float(gradient.norm()) > 0
