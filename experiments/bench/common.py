"""Shared pieces of the benchmarks: model shapes, synthetic batches, timing helpers, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from astra.models.build import build_llama_from_config
from astra.run.results import git_state, now_iso, package_versions

RESULTS_DIR = Path(__file__).parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# LLaMA-shaped configs. "llama100m" has ~97M parameters: 12 layers of LLaMA's block at width 768.
SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=2048, tie_word_embeddings=False),
    "llama100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=12, vocab_size=8192, tie_word_embeddings=False),
    "llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
}  # fmt: skip


def build_model(shape: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    return build_llama_from_config(seed=seed, dtype=dtype, max_position_embeddings=4096, **SHAPES[shape])


def synthetic_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab_size, (batch_size, seq_len), generator=generator)
    labels = input_ids.clone()
    labels[:, : seq_len // 4] = -100  # a masked prompt, as in real batches
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0) -> str:
    """``min / median / max`` of a side's timings (times ``scale``), for the printed tables."""
    if not values:
        return ""
    return "/".join(f"{scale * v:.4g}" for v in (min(values), statistics.median(values), max(values)))


def spreads_overlap(a: list[float], b: list[float]) -> bool:
    """Whether two sides' [min, max] ranges overlap: their difference is then within the machine's noise."""
    return bool(a and b) and min(a) <= max(b) and min(b) <= max(a)


def environment(device: torch.device) -> dict:
    info = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(payload: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"created": now_iso(), "git": git_state(), "versions": package_versions(), **payload}
    out.write_text(json.dumps(payload, indent=2))
    return out


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
