"""How Astra's initialisation grows with model width, against the forward pass over the same calibration data.

    PYTHONPATH=src python experiments/bench/init_scaling.py                        # d = 512 .. 4096, 3 rounds, CPU (~9 min)
    PYTHONPATH=src python experiments/bench/init_scaling.py --widths 512 1024 --eigensolvers auto exact

Per width d (LLaMA-shaped, random weights, ``--layers`` blocks, intermediate size 2.6875 d as LLaMA-2-7B's
11008 / 4096, vocabulary 8192; LoRA rank ``--rank`` on all seven projections), in a fresh process per width and
arm, so peak memory is that arm's own (in one process, the pages a first arm freed stay resident and a second arm
reuses them without raising the peak: an earlier version reported 0.1 MB for an init at d = 1024 that way):

- ``fwd_s``: a plain forward pass over the calibration batches (no hooks, no grad), the work calibration adds to
  (measured in every arm's process; the median of all their rounds);
- ``calib_s`` / ``post_s`` / ``init_s``: Astra's calibration pass, its eigen stage and the whole init (wrapping
  included), for each ``--eigensolvers`` arm (``auto``: randomized top-r where max(n_iter, 4) (r + oversample) <=
  size; ``auto_warn``: the same, keeping unconverged randomized bases, ``on_unconverged=warn``, rather than
  re-solving them with ``eigh``);
- each time is the median of ``--rounds`` repeats in the process; the first carries one-time start-up costs
  (first calls, lazy initialisation: about 0.2 s), which the median of three discards;
- ``peak_MB``: peak resident memory of the init above what the model and data took (VmHWM, reset before it).

Then, per column, the exponent k of time ~ d^k fitted by least squares on log-log axes. A forward pass over T
tokens costs ~ d^2 T (the weights), so its exponent is at most 2 (less where per-call overheads dominate at small
d); Astra's init should grow no faster. A dense ``eigh`` costs d^3, which is what the ``exact`` arm shows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, environment, median, print_table, spread, synthetic_batch, write_json  # noqa: E402

from astra.models.build import build_llama_from_config  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def build(width: int, layers: int):
    heads = max(1, width // 128)
    config = dict(hidden_size=width, intermediate_size=int(2.6875 * width), num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, vocab_size=8192, tie_word_embeddings=False)  # fmt: skip
    return build_llama_from_config(seed=0, dtype=torch.float32, max_position_embeddings=4096, **config)


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(args) -> None:
    """One width: forward and Astra init times (median over ``--rounds``) and peak memory; one JSON line."""
    sys.path.insert(0, str(Path(__file__).parent))
    from init_arms import method_config, run_init  # the init exactly as init_cost (and apply_method) runs it
    from torch.utils.data import DataLoader

    torch.set_num_threads(args.threads)
    width = args.worker
    base = build(width, args.layers)
    batch = synthetic_batch(8192, args.samples, args.seq_len, seed=1)
    rows = [{key: value[i] for key, value in batch.items()} for i in range(args.samples)]
    loader = DataLoader(rows, batch_size=8)
    size = {"samples": args.samples, "seq_len": args.seq_len, "rank": args.rank, "batch_size": 8, "lora_ga_samples": 0}
    out = {"width": width, "params_M": round(sum(p.numel() for p in base.parameters()) / 1e6, 1)}

    def forward():
        with torch.no_grad():
            for chunk in loader:
                base(input_ids=chunk["input_ids"], attention_mask=chunk["attention_mask"], use_cache=False,
                     logits_to_keep=1)  # fmt: skip

    forward()  # warm-up
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        forward()
        seconds.append(time.perf_counter() - start)
    out["fwd_times"] = seconds
    import copy

    for arm in args.eigensolvers:
        name = {"exact": "astra_exact", "auto": "astra", "auto_warn": "astra_warn"}[arm]
        method_config(name, args.rank)  # fails early on a bad arm
        totals, calibs, posts, peaks = [], [], [], []
        for _ in range(args.rounds):
            model = copy.deepcopy(base)
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
            before = rss("VmRSS")
            start = time.perf_counter()
            report = run_init(name, model, rows, size, torch.device("cpu"))
            totals.append(time.perf_counter() - start)
            peaks.append((rss("VmHWM") - before) / 2**20)
            calibs.append(report.get("calibration_seconds", float("nan")))
            posts.append(report.get("init_seconds", float("nan")))
            out[f"{arm}_solvers"] = report.get("solvers")
            del model
        out[f"{arm}_init_s"], out[f"{arm}_calib_s"], out[f"{arm}_post_s"] = median(totals), median(calibs), median(posts)
        out[f"{arm}_init_times"] = totals
        out[f"{arm}_peak_MB"] = max(peaks)
    print(json.dumps(out))


def fitted_exponent(widths: list[int], values: list[float]) -> float | None:
    points = [(math.log(w), math.log(v)) for w, v in zip(widths, values) if v and v > 0 and math.isfinite(v)]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", nargs="+", type=int, default=[512, 1024, 2048, 4096])
    parser.add_argument("--layers", type=int, default=1, help="LLaMA blocks (fixed depth)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="timed repeats per process (min / median / max)")
    parser.add_argument("--eigensolvers", nargs="+", default=["auto"], choices=["auto", "exact", "auto_warn"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: robust to a shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "init_scaling.json")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    started = time.perf_counter()
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    for width in args.widths:
        row, forwards = {}, []
        for arm in args.eigensolvers:
            command = [sys.executable, __file__, "--worker", str(width), "--eigensolvers", arm]
            for flag in ("layers", "samples", "seq_len", "rank", "rounds", "threads"):
                command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"width {width}, arm {arm} failed:\n{done.stderr[-3000:]}")
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            forwards += measured.pop("fwd_times")
            row.update(measured)
        rows.append({**row, "fwd_s": median(forwards), "fwd_times": forwards})
        print(f"d={width}: {rows[-1]}", flush=True)
    columns = ["fwd_s"] + [f"{arm}_{key}" for arm in args.eigensolvers for key in ("init_s", "calib_s", "post_s", "peak_MB")]
    widths = [row["width"] for row in rows]
    fit = {"width": "exponent k"}
    fit.update({column: fitted_exponent(widths, [row.get(column) for row in rows]) for column in columns})
    print()
    print(f"Astra init against width (fixed depth {args.layers}, {args.samples} x {args.seq_len} calibration tokens, "
          f"r = {args.rank}; last row: k in time ~ d^k)")  # fmt: skip
    print_table([*rows, fit], ["width", "params_M", *columns])
    print(f"\nSpread over {args.rounds} round(s) per process (seconds, min/median/max; the forward pass from every "
          "arm's process)")  # fmt: skip
    spreads = [{"width": row["width"], "fwd_s": spread(row["fwd_times"]),
                **{f"{arm}_init_s": spread(row[f"{arm}_init_times"]) for arm in args.eigensolvers}} for row in rows]
    print_table(spreads, list(spreads[0]))
    forward_k = fit["fwd_s"]
    for arm in args.eigensolvers:
        k = fit.get(f"{arm}_init_s")
        if k is not None and forward_k is not None:
            verdict = "no faster than" if k <= forward_k + 0.15 else "FASTER than"
            print(f"{arm}: init grows as d^{k:.2f}, {verdict} the forward pass (d^{forward_k:.2f})")
    out = write_json({"benchmark": "init_scaling", "environment": environment(torch.device("cpu")),
                      "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                      "rows": rows, "exponents": fit, "wall_s": time.perf_counter() - started}, args.out)  # fmt: skip
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
