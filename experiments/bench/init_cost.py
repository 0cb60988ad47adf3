"""Wall time and peak memory of each method's initialisation, and the cost of Astra's calibration pass.

    PYTHONPATH=src python experiments/bench/init_cost.py                     # tiny and ~100M models (CPU: ~5 min)
    PYTHONPATH=src python experiments/bench/init_cost.py --shapes tiny --rounds 3
    PYTHONPATH=src python experiments/bench/init_cost.py --shapes llama2_7b   # GPU: 256 x 512 tokens, bf16, r=128

What is measured, per model shape (LLaMA-shaped, random weights; LoRA on q,k,v,o,gate,up,down; alpha = r):

- init time of lora, dora, pissa (pissa_niter_16), lora_ga and astra as a user runs them: the method's YAML
  (conf/method/*.yaml) gives the PEFT config and the init callable, the model is wrapped with ``get_peft_model``
  and the init callable gets a DataLoader of synthetic calibration rows (``common.synthetic_batch``), exactly
  as ``astra.run.steps.apply_method`` chains them; the time covers wrapping plus init (PiSSA's SVD runs inside
  the wrapping). Methods run interleaved in rounds in one process, each on a fresh copy of the same base model;
  the median over rounds is reported, and astra / pissa is the median of the per-round ratios;
- ``reference``: the reference code's approach, re-implemented here as a measurement baseline only (DESIGN.md
  §1): batch size 1, each sample's output Y / |max(Y)| (signed maximum, then abs), Y^T Y accumulated in bfloat16
  on the OUTPUT side of every layer (d_out^2 per token: 11008^2 for LLaMA-7B's gate/up), divided by N, then
  ``eigh`` in float32, B = the top-r eigenvectors, A = B^T W, W - s B A. It is the slowest arm by far, so by
  default it is timed once, in its memory subprocess (``--reference-rounds k`` adds it to the first k rounds);
- Astra's calibration pass (``collect_output_moments`` with the YAML's options, cache off) as a multiple of a
  plain forward pass over the same calibration batches (no hooks, ``torch.no_grad``, adapters off as in
  calibration, the same call: ``use_cache=False, logits_to_keep=1``; ``fwd_full`` is the default call that
  computes every logit), interleaved in ``--ratio-rounds`` rounds with the order rotated; the unshared route
  (``share_inputs=false``: every layer accumulates its own moment) is measured alongside. Target: <= 1.5;
- peak memory of each init: on CPU in a fresh subprocess per method (``--worker``): peak RSS (VmHWM, reset via
  /proc/self/clear_refs after the model and data are built) minus the RSS at that point; on GPU
  ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before the init.

Sizes: every size is a flag; defaults per shape (samples x tokens; rank): tiny and llama100m 16 x 128, r = 16;
llama2_7b 256 x 512 (the paper's math/code setting), r = 128, bf16 weights. LoRA-GA uses its YAML's batch size (2)
and ``--lora-ga-samples`` rows (default: as many as Astra on CPU shapes, its YAML's 128 on llama2_7b).
On a GPU, mind the 10-minute limit of one command: time the 7B methods apart, e.g. ``--shapes llama2_7b --methods
pissa astra --rounds 1``, then ``--methods lora_ga``; the reference on 7B solves 64 float32 eigenproblems of size
11008 (gate/up outputs) and may need a run of its own. Astra's ``post_calib_s`` is its eigen stage (224 problems
of size 4096 for 7B, stacked per size into batched ``eigh`` calls). On CPU ``--threads`` (default 1) intra-op threads: the 2-core machine is shared, and one thread keeps other jobs'
load from stalling a multi-threaded matmul (the ratios are what matter; absolute times depend on the load).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    SHAPES,
    build_model,
    environment,
    median,
    print_table,
    spread,
    spreads_overlap,
    synchronize,
    synthetic_batch,
    write_json,
)
from init_arms import METHODS, method_config, run_init  # noqa: E402

from astra.calibration.common import adapters_disabled, forward_extras, lora_targets  # noqa: E402
from astra.calibration.moment_accumulation import MomentOptions
from astra.calibration.moments import collect_output_moments

DEFAULTS = {  # samples, tokens, rank
    "tiny": (16, 128, 16),
    "llama100m": (16, 128, 16),
    "llama2_7b": (256, 512, 128),
}


# --------------------------------------------------------------------------------------------- set-up


def sizes(args, shape: str) -> dict:
    samples, seq_len, rank = DEFAULTS.get(shape, DEFAULTS["llama100m"])
    samples = args.samples or samples
    return {
        "samples": samples,
        "seq_len": args.seq_len or seq_len,
        "rank": args.rank or rank,
        "batch_size": args.batch_size,
        "lora_ga_samples": args.lora_ga_samples or (128 if shape == "llama2_7b" else samples),
    }


def model_dtype(args, device: torch.device) -> torch.dtype:
    name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return getattr(torch, name)


def build_base(shape: str, dtype: torch.dtype, device: torch.device):
    """The shape's LLaMA with random weights, on ``device`` (built there directly on a GPU: 7B in seconds)."""
    if device.type != "cuda":
        return build_model(shape, seed=0, dtype=dtype).to(device)
    from transformers import LlamaConfig, LlamaForCausalLM

    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device), torch.random.fork_rng(devices=[device]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=4096, **SHAPES[shape]))
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype)


def calibration_rows(shape: str, n: int, seq_len: int) -> list[dict]:
    batch = synthetic_batch(SHAPES[shape]["vocab_size"], n, seq_len, seed=1)
    return [{key: value[i] for key, value in batch.items()} for i in range(n)]


# --------------------------------------------------------------------------------------------- measurements


def timed(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def calibration_ratio(base, rows: list[dict], size: dict, rounds: int, device: torch.device) -> dict:
    """Astra's calibration pass (shared and unshared) against plain forwards, interleaved with rotating order."""
    from peft import LoraConfig, get_peft_model

    cfg = method_config("astra", size["rank"])
    model = get_peft_model(
        copy.deepcopy(base), LoraConfig(task_type="CAUSAL_LM", **OmegaConf.to_container(cfg.peft, resolve=True))
    )
    init = OmegaConf.to_container(cfg.init, resolve=True)
    fields = ("normalize", "center", "mask_padding", "dtype", "route", "share_inputs")
    options = MomentOptions(**{key: init[key] for key in fields if key in init})
    unshared = MomentOptions(**{**{key: init[key] for key in fields if key in init}, "share_inputs": False})
    loader = DataLoader(rows[: size["samples"]], batch_size=size["batch_size"])
    layers = {name: layer.get_base_layer() for name, layer in lora_targets(model, "default").items()}
    extras = forward_extras(model, need_logits=False)

    def forward(**kwargs):
        with torch.no_grad(), adapters_disabled(model):
            model.eval()
            for batch in loader:
                model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), **kwargs
                )

    def calibrate(opts):
        return collect_output_moments(model, loader, layers, opts, cache=False, progress=False)

    arms = {
        "fwd": lambda: forward(**extras),
        "fwd_full": lambda: forward(),
        "astra_calib": lambda: calibrate(options),
        "unshared_calib": lambda: calibrate(unshared),
    }
    arms["fwd"]()  # warm-up: first-call allocations, thread pools
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    routes = None
    for index in range(rounds):
        order = list(arms)
        order = order[index % len(order) :] + order[: index % len(order)]
        for arm in order:
            seconds, result = timed(arms[arm], device)
            times[arm].append(seconds)
            if arm == "astra_calib":
                routes = {route: sum(s.route == route for s in result.stats.values()) for route in ("input", "output")}
            del result
    per_round = {
        "ratio": [a / f for a, f in zip(times["astra_calib"], times["fwd"])],
        "ratio_unshared": [a / f for a, f in zip(times["unshared_calib"], times["fwd"])],
        "ratio_full": [a / f for a, f in zip(times["astra_calib"], times["fwd_full"])],
    }
    row = {arm: median(values) for arm, values in times.items()}
    row.update({key: median(values) for key, values in per_round.items()})
    row["routes"] = routes
    row["ratio_spread"] = spread(per_round["ratio"])
    row["calib_overlaps_fwd"] = spreads_overlap(times["astra_calib"], times["fwd"])
    row["rounds"] = {"seconds": times, **per_round}
    return row


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(args) -> None:
    """One method's init in this fresh process; prints one JSON line with its time and peak memory."""
    device = torch.device(args.device)
    shape, name = args.shapes[0], args.worker
    size = sizes(args, shape)
    base = build_base(shape, model_dtype(args, device), device)
    rows = calibration_rows(shape, max(size["samples"], size["lora_ga_samples"]), size["seq_len"])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = current_rss()
    seconds, report = timed(lambda: run_init(name, base, rows, size, device), device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss()
    print(json.dumps({"method": name, "shape": shape, "seconds": seconds, "peak_bytes": peak - before, **report}))


def measure_in_subprocess(args, shape: str, name: str) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--shapes", shape, "--device", args.device]
    for flag in ("samples", "seq_len", "rank", "batch_size", "lora_ga_samples", "dtype", "threads"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"worker {shape}/{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(shape: str, args, device: torch.device) -> tuple[list[dict], dict]:
    size = sizes(args, shape)
    base = build_base(shape, model_dtype(args, device), device)
    rows = calibration_rows(shape, max(size["samples"], size["lora_ga_samples"]), size["seq_len"])
    n_params = sum(p.numel() for p in base.parameters())
    print(f"[{shape}] {n_params / 1e6:.1f}M parameters, {size}", flush=True)

    ratio = calibration_ratio(base, rows, size, args.ratio_rounds, device)
    ratio.update(model=shape, params_M=round(n_params / 1e6, 1), calib=f"{size['samples']}x{size['seq_len']}")
    print(
        f"[{shape}] calibration / forward = {ratio['ratio']:.3f} (unshared {ratio['ratio_unshared']:.3f})", flush=True
    )

    times: dict[str, list[float]] = {name: [] for name in args.methods}
    reports: dict[str, list[dict]] = {name: [] for name in args.methods}
    for index in range(args.rounds):
        for name in args.methods:
            if name == "reference" and index >= args.reference_rounds:
                continue
            model = copy.deepcopy(base)
            seconds, report = timed(functools.partial(run_init, name, model, rows, size, device), device)
            times[name].append(seconds)
            reports[name].append(report)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"[{shape}] round {index + 1}: {name} {seconds:.2f}s", flush=True)
    memory = {name: measure_in_subprocess(args, shape, name) for name in args.methods} if not args.no_memory else {}

    rows_out = []
    for name in args.methods:
        row = {"model": shape, "method": name, "rounds": len(times[name])}
        # no interleaved rounds (the slow reference by default): the time of its fresh-process run
        worker_report = [memory[name]] if name in memory else []
        row["init_s"] = median(times[name]) if times[name] else (memory[name]["seconds"] if worker_report else None)
        for key, column in (("calibration_seconds", "calib_s"), ("init_seconds", "post_calib_s")):
            values = [r[key] for r in (reports[name] or worker_report) if key in r]
            if values:
                row[column] = median(values)
        if name in memory:
            row["peak_MB"] = memory[name]["peak_bytes"] / 2**20
            row["worker_s"] = memory[name]["seconds"]
        row["times"] = times[name]
        row["init_spread"] = spread(times[name])
        post = [r["init_seconds"] for r in reports[name] if "init_seconds" in r]
        if post:
            row["post_calib_times"] = post
            row["post_spread"] = spread(post)
        solvers = [r["solvers"] for r in (reports[name] or worker_report) if "solvers" in r]
        if solvers:
            row["solvers"] = solvers[-1]
        rows_out.append(row)
    by_name = {row["method"]: row for row in rows_out}
    if "pissa" in by_name:
        for name in ("astra", "lora_ga", "reference"):
            if name in by_name and by_name[name]["init_s"] is not None:
                pairs = list(zip(times[name], times["pissa"]))  # per-round ratios when interleaved
                ratios = [a / p for a, p in pairs] or [by_name[name]["init_s"] / by_name["pissa"]["init_s"]]
                by_name[name]["vs_pissa"] = median(ratios)
    for name in ("astra", "astra_exact", "astra_retry", "astra_warn"):  # issue 12: Astra after calibration
        # (its eigen stage) at most PiSSA's whole init
        if name in by_name and "pissa" in by_name and by_name[name].get("post_calib_times"):
            post, pissa = by_name[name]["post_calib_times"], times["pissa"]
            by_name[name]["post_vs_pissa"] = median([a / p for a, p in zip(post, pissa)])
            by_name[name]["post_overlaps_pissa"] = spreads_overlap(post, pissa)
    if "astra" in by_name and "reference" in by_name and by_name["reference"]["init_s"] is not None:
        by_name["reference"]["vs_astra"] = by_name["reference"]["init_s"] / by_name["astra"]["init_s"]
    ratio["sizes"] = size
    return rows_out, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["tiny", "llama100m"], choices=sorted(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--samples", type=int, help="Astra calibration rows (default per shape: 16; llama2_7b 256)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default per shape: 128; llama2_7b 512)")
    parser.add_argument("--rank", type=int, help="LoRA rank, alpha = rank (default per shape: 16; llama2_7b 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="Astra calibration batch size (its YAML: 8)")
    parser.add_argument("--lora-ga-samples", type=int, help="LoRA-GA gradient rows, batch size 2 (default above)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="model weights (default: bf16 on GPU)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved init-timing rounds")
    parser.add_argument(
        "--reference-rounds", type=int, default=0, help="rounds that include the slow reference (0: time its worker)"
    )
    parser.add_argument("--ratio-rounds", type=int, default=3, help="interleaved calibration-vs-forward rounds")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: 1 on CPU, torch's on GPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "init_cost.json")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads or device.type == "cpu":
        args.threads = args.threads or 1
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return
    started = time.perf_counter()
    init_rows, ratio_rows = [], []
    for shape in args.shapes:
        rows, ratio = measure(shape, args, device)
        init_rows += rows
        ratio_rows.append(ratio)
    print()
    print("Init cost (median over interleaved rounds; min/median/max in seconds; peak memory from a fresh process per")
    print("method; post_vs_pissa: Astra's time after calibration over PiSSA's whole init, per-round median)")
    print_table(
        init_rows,
        ["model", "method", "init_s", "init_spread", "calib_s", "post_calib_s", "post_spread", "vs_pissa",
         "post_vs_pissa", "post_overlaps_pissa", "vs_astra", "peak_MB", "rounds"],
    )  # fmt: skip
    for row in init_rows:
        if row.get("solvers"):
            print(f"  {row['model']} {row['method']} solvers: {row['solvers']}")
    print()
    print("Astra calibration pass / plain forward over the same batches (target <= 1.5)")
    print_table(
        ratio_rows,
        [
            "model",
            "params_M",
            "calib",
            "fwd",
            "fwd_full",
            "astra_calib",
            "ratio",
            "ratio_spread",
            "calib_overlaps_fwd",
            "ratio_full",
            "unshared_calib",
            "ratio_unshared",
        ],
    )
    out = write_json(
        {
            "benchmark": "init_cost",
            "target": "astra calibration <= 1.5 x plain forward; full 7B Astra init < 60 s on one H100/H200",
            "environment": environment(device),
            "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "init": init_rows,
            "calibration_vs_forward": ratio_rows,
            "wall_s": time.perf_counter() - started,
        },
        args.out,
    )
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
