"""The 7B path rehearsed on a CPU: LLaMA-2-7B's shapes at full width, a few of its layers, random weights, bf16.

    PYTHONPATH=src python experiments/bench/rehearse_7b.py                      # astra, pissa, lora_ga at 2 and 4 layers, astra at 3
    PYTHONPATH=src python experiments/bench/rehearse_7b.py --methods astra --layers 2 --fit-check-layers none

Each cell is one ordinary run (``astra.run.runner.train``, the code path of ``python run.py``) in a fresh subprocess:
``model=llama2_7b_shape`` (hidden 4096, MLP 11008, 32 heads, 32000-row vocabulary; ``num_hidden_layers`` = the
cell's depth), ``rank=128 alpha=128`` on all seven projections, calibration on ``--calibration-rows`` rows padded
to ``--max-length`` tokens (16 x 512 by default; the paper's math setting is 256 x 512), ``--train-steps``
optimizer steps, ``--eval-items`` GSM8K sample items (generation cut to ``--new-tokens`` tokens: a random model
never stops by itself), then the merged export the vLLM backend writes
(``astra.tasks.lm_eval_vllm.export_trained_model``): the trained adapter (for residual methods the converted one,
which loads on the ORIGINAL base) is loaded on a rebuilt base, merged, written, reloaded with
``AutoModelForCausalLM.from_pretrained``, and its logits compared with the adapter model's.

Measured per cell: wall time per phase (the run's own ``wall_time_s``) and peak resident memory per phase (VmRSS
sampled every 50 ms, each sample counted against the phase running then). The per-layer cost is fitted from two
depths as ``t(L) = a + b L`` (a: the embedding, the 32000-row head, the data; b: one block), checked on a third
depth, and extrapolated to 32 layers. Time extrapolates to this CPU only; memory carries over to a GPU for the
weights and per-layer statistics. Results: experiments/bench/results/rehearse_7b.json and the printed table;
docs/performance.md#7b-rehearsal quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))

from common import RESULTS_DIR, write_json  # noqa: E402

REAL_LAYERS = 32


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PhaseMemory:
    """Peak VmRSS per run phase, sampled on a thread; the phase is the run's Stopwatch's current one."""

    def __init__(self):
        self.peaks: dict[str, int] = {}
        self.watch = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            phase = getattr(self.watch, "phase", "setup")
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss_bytes())
            time.sleep(0.05)

    def __enter__(self):
        from astra.run import record

        memory, original_init = self, record.Stopwatch.__init__

        def init(watch):
            original_init(watch)
            memory.watch = watch

        record.Stopwatch.__init__ = init
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def overrides_for(args, method: str, layers: int) -> list[str]:
    return [
        "model=llama2_7b_shape", f"model.architecture.num_hidden_layers={layers}", f"method={method}", "task=gsm8k",
        "rank=128", "alpha=128", f"calibration_samples={args.calibration_rows}", f"task.max_length={args.max_length}",
        f"trainer.lightning.max_steps={args.train_steps}", "trainer.lightning.max_epochs=1", "trainer.batch_size=2",
        f"trainer.eval_limit={args.eval_items}", f"task.eval.max_new_tokens={args.new_tokens}",
        "forgetting.max_windows=2", "logger=none", "callbacks=none", "experiment_name=rehearse_7b",
    ]  # fmt: skip


def merged_export_check(cfg, run_dir: Path) -> dict:
    """Rebuild the base, load the exported adapter, merge and write it as the vLLM backend does, reload, compare."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from astra.models.build import build_model, build_tokenizer, resolve_dtype
    from astra.tasks.lm_eval_vllm import export_trained_model

    start = time.perf_counter()
    tokenizer = build_tokenizer(cfg.model)
    base = build_model(cfg.model, cfg.seed, tokenizer)  # the same seed: the same random weights as the run's
    adapter = run_dir / ("adapter_converted" if cfg.method.get("residual") else "adapter")
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    out = export_trained_model(model, tokenizer, run_dir / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=resolve_dtype(cfg.model.dtype)).eval()
    ids = tokenizer("Natalia sold clips to 48 of her friends in April.", return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = model(input_ids=ids).logits.float(), reloaded(input_ids=ids).logits.float()
    difference = (expected - got).abs().max().item()
    scale = expected.abs().max().item()
    return {"seconds": round(time.perf_counter() - start, 2), "max_abs_logit_difference": difference,
            "max_abs_logit": scale, "same_argmax": bool((expected.argmax(-1) == got.argmax(-1)).all()),
            "bytes": sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))}  # fmt: skip


def worker(args, method: str, layers: int) -> None:
    """One cell, in this process; prints its JSON line last."""
    import torch
    from hydra import compose, initialize_config_dir

    import astra.run.hydra_support  # noqa: F401 - the ${astra_...} resolvers, as run.py registers them
    from astra.run import runner

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix=f"rehearse_{method}_{layers}_"))
    overrides = [*overrides_for(args, method, layers), f"paths.output_dir={work / 'run'}",
                 f"paths.log_dir={work / 'logs'}", f"paths.results_dir={work / 'results'}"]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with PhaseMemory() as memory:
        runner.train(cfg, overrides=overrides)
        result = json.loads((work / "run" / "result.json").read_text())
        memory.watch.phase = "merged_export"
        export = merged_export_check(cfg, work / "run") if result["status"] == "ok" else None
    cell = {"method": method, "layers": layers, "status": result["status"], "error": result.get("error"),
            "seconds": {k: v for k, v in result["wall_time_s"].items()}, "peak_rss_bytes": memory.peaks,
            "parameters": result.get("parameters"), "init": {k: result.get("init", {}).get(k) for k in
                                                             ("eigensolver", "seconds", "layers")},
            "train_steps": result.get("train_loss", {}).get("steps"), "metrics": result.get("metrics"),
            "merged_export": export, "run_dir": str(work / "run")}  # fmt: skip
    if export is not None:
        cell["seconds"]["merged_export"] = export["seconds"]
    print(json.dumps(cell, default=str), flush=True)


def run_cell(args, method: str, layers: int) -> dict:
    """One cell in a fresh subprocess (its peak memory is its own)."""
    command = [sys.executable, __file__, *sys.argv[1:], "--worker", method, str(layers)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"method": method, "layers": layers, "status": "failed", "error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1])


def fit(cells: list[dict], method: str, depths: tuple[int, int], check: int | None) -> dict:
    """``t(L) = a + b L`` through the two depths, per phase (seconds and peak RSS), checked on ``check`` layers and
    extrapolated to the real model's 32."""
    by_depth = {c["layers"]: c for c in cells if c["method"] == method and c["status"] == "ok"}
    if not all(d in by_depth for d in depths):
        return {}
    low, high = (by_depth[d] for d in depths)
    out = {}
    for measure in ("seconds", "peak_rss_bytes"):
        for phase in sorted(set(low[measure]) & set(high[measure])):
            slope = (high[measure][phase] - low[measure][phase]) / (depths[1] - depths[0])
            intercept = low[measure][phase] - slope * depths[0]
            row = {"per_layer": slope, "fixed": intercept, "predicted_32": intercept + slope * REAL_LAYERS}
            if check in by_depth and phase in by_depth[check][measure]:
                predicted, measured = intercept + slope * check, by_depth[check][measure][phase]
                row.update(check_layers=check, check_predicted=predicted, check_measured=measured,
                           check_error=(predicted - measured) / measured if measured else None)
            out[f"{measure}.{phase}"] = row
    return out


def table(cells: list[dict], fits: dict) -> str:
    lines = ["| method | layers | status | " + " | ".join(PHASES) + " | peak RSS (GiB) | merged logits max |diff| |",
             "|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for c in cells:
        seconds = [f"{c['seconds'].get(p, float('nan')):.1f}" if "seconds" in c else "-" for p in PHASES]
        peak = max(c.get("peak_rss_bytes", {0: 0}).values()) / 2**30
        export = c.get("merged_export") or {}
        difference = export.get("max_abs_logit_difference")
        lines.append(f"| {c['method']} | {c['layers']} | {c['status']} | " + " | ".join(seconds)
                     + f" | {peak:.1f} | {'-' if difference is None else f'{difference:.3g}'} |")
    for method, rows in fits.items():
        for key in ("seconds.total", "seconds.init", "peak_rss_bytes.init", "peak_rss_bytes.train"):
            if key in rows:
                r = rows[key]
                scale, unit = (1, "s") if key.startswith("seconds") else (2**-30, "GiB")
                check = (f"; at {r['check_layers']} layers predicted {r['check_predicted'] * scale:.1f}, measured "
                         f"{r['check_measured'] * scale:.1f} ({100 * r['check_error']:+.0f}%)") if "check_layers" in r else ""
                lines.append(f"- {method} {key}: {r['fixed'] * scale:.1f} + {r['per_layer'] * scale:.2f} {unit} x L; "
                             f"32 layers: {r['predicted_32'] * scale:.1f} {unit} (prediction){check}")
    return "\n".join(lines)


PHASES = ("setup", "init", "train", "eval", "forgetting", "export", "merged_export", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["astra", "pissa", "lora_ga"])
    parser.add_argument("--layers", nargs=2, type=int, default=[2, 4], help="the two depths the fit goes through")
    parser.add_argument("--fit-check-layers", default="3", help="a third depth (astra only) to check the fit; none: skip")
    parser.add_argument("--calibration-rows", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--eval-items", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "rehearse_7b.json")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args, args.worker[0], int(args.worker[1]))
        return
    check = None if args.fit_check_layers == "none" else int(args.fit_check_layers)
    plan = [(m, d) for m in args.methods for d in args.layers] + ([(args.methods[0], check)] if check else [])
    cells = []
    for method, layers in plan:
        print(f"{method} at {layers} layers ...", flush=True)
        cells.append(run_cell(args, method, layers))
        print(json.dumps({k: cells[-1].get(k) for k in ("status", "seconds", "error")}, default=str)[:600], flush=True)
    fits = {m: fit(cells, m, tuple(args.layers), check if m == args.methods[0] else None) for m in args.methods}
    text = table(cells, fits)
    print(text)
    write_json({"sizes": {k: v for k, v in vars(args).items() if k not in ("out", "worker")}, "cells": cells,
                "fits": fits, "table": text}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
