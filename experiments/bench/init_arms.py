"""The arms ``init_cost.py`` and ``init_scaling.py`` time: each method's init as a user runs it, and the reference
code's approach re-implemented as a measurement baseline (see ``init_cost.py``'s docstring for what is measured)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import TARGETS, synchronize  # noqa: E402

from astra.calibration.common import (
    adapters_disabled,
    lora_targets,  # noqa: E402
)
from astra.methods.astra import write_adapter  # noqa: E402
from astra.methods.base import InitContext  # noqa: E402

CONF = Path(__file__).resolve().parents[2] / "conf" / "method"
METHODS = ("lora", "dora", "pissa", "lora_ga", "astra", "astra_exact", "astra_retry", "astra_warn", "reference")
# Arms that are a method YAML with init options changed. ``astra`` is the YAML as a user runs it (its default
# eigensolver, auto: randomized top-r eigenvectors where max(n_iter, 4) x (r + oversample) <= size, with exact
# fallback for unconverged layers); astra_exact is Astra with method.init.eigensolver=exact (dense eigh of every
# layer, the reference's semantics); astra_retry adds retry_oversample=64 (a wider second solve before the
# fallback); astra_warn keeps unconverged randomized bases (on_unconverged=warn) instead of re-solving them exactly.
VARIANTS = {"astra_exact": ("astra", {"eigensolver": "exact"}),
            "astra_retry": ("astra", {"eigensolver": "auto", "retry_oversample": 64}),
            "astra_warn": ("astra", {"eigensolver": "auto", "on_unconverged": "warn"})}
SEED = 42


def method_config(name: str, rank: int):
    """conf/method/<name>.yaml (or a VARIANTS arm) with rank, alpha (= rank) and the target modules filled in."""
    base, init_overrides = VARIANTS.get(name, (name, {}))
    import astra.run.hydra_support  # noqa: F401 - the ${astra_...} resolvers the method YAMLs use, as run.py registers

    root = OmegaConf.create({"rank": rank, "alpha": rank, "model": {"target_modules": TARGETS, "lr": 1.0e-4},
                             "calibration_samples": None, "calibration_text": None, "eigensolver": None})
    root.method = OmegaConf.load(CONF / f"{base}.yaml")
    for key, value in init_overrides.items():
        root.method.init[key] = value
    return root.method


def run_init(name: str, base, rows: list[dict], size: dict, device: torch.device) -> dict:
    """Wrap ``base`` (modified in place) with PEFT and run the method's init, as apply_method does."""
    from peft import LoraConfig, get_peft_model

    if name == "reference":
        cfg = method_config("astra", size["rank"])
    else:
        cfg = method_config(name, size["rank"])
    peft_kwargs = OmegaConf.to_container(cfg.peft, resolve=True)
    report: dict = {}
    torch.manual_seed(SEED)  # Kaiming init of A and PiSSA's randomized SVD are seeded, as in apply_method
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **peft_kwargs))
    if name == "reference":
        report = reference_init(model, rows[: size["samples"]], device)
    elif cfg.get("calibration"):
        n = size["lora_ga_samples"] if name == "lora_ga" else size["samples"]
        batch_size = cfg.calibration.batch_size if name == "lora_ga" else size["batch_size"]
        loader = DataLoader(rows[:n], batch_size=batch_size)
        init_fn = hydra.utils.instantiate(cfg.init)
        report = init_fn(model, loader, InitContext(seed=SEED, device=device), n_samples=n, progress=False)
    else:
        hydra.utils.instantiate(cfg.init)(model, None, InitContext(seed=SEED, device=device))
    kept = {key: value for key, value in report.items() if key in ("calibration_seconds", "init_seconds")}
    if "eigensolver" in report:
        solvers = report["eigensolver"]
        kept["solvers"] = {key: solvers.get(key) for key in ("exact", "randomized", "unconverged_layers")}
        kept["solvers"]["unconverged_layers"] = len(kept["solvers"]["unconverged_layers"] or [])
        kept["solvers"].update({key: solvers[key] for key in ("max_angle_bound", "min_gap") if key in solvers})
    return kept





@torch.no_grad()
def reference_accumulate(model, rows: list[dict], device: torch.device) -> dict[str, torch.Tensor]:
    """The reference code's statistics: batch size 1, Y / |max(Y)|, sum Y^T Y in bfloat16 per layer (output side)."""
    targets = lora_targets(model, "default")
    covariances: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            y = output[0].detach().to(torch.bfloat16)  # batch size 1: [T, d_out]
            y = y / y.max().abs()
            if name not in covariances:
                covariances[name] = torch.zeros(y.shape[-1], y.shape[-1], dtype=torch.bfloat16, device=y.device)
            covariances[name] += y.T @ y

        return hook

    handles = [layer.get_base_layer().register_forward_hook(make_hook(name)) for name, layer in targets.items()]
    try:
        with adapters_disabled(model):
            model.eval()
            for row in DataLoader(rows, batch_size=1):
                model(input_ids=row["input_ids"].to(device), attention_mask=row["attention_mask"].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return covariances


@torch.no_grad()
def reference_init(model, rows: list[dict], device: torch.device) -> dict:
    start = time.perf_counter()
    covariances = reference_accumulate(model, rows, device)
    synchronize(device)
    calibration = time.perf_counter() - start
    for name, layer in lora_targets(model, "default").items():
        covariance = covariances.pop(name).div_(len(rows)).float()  # divided by N, eigh in float32
        _, vectors = torch.linalg.eigh(covariance)
        weight = layer.get_base_layer().weight
        rank = layer.r["default"]
        lora_b = vectors[:, -rank:]
        lora_a = lora_b.T @ weight.float()
        residual = weight.float() - layer.scaling["default"] * lora_b @ lora_a
        write_adapter(layer, "default", lora_a.to(weight.dtype), lora_b.to(weight.dtype), residual.to(weight.dtype))
    synchronize(device)
    return {"calibration_seconds": calibration, "init_seconds": time.perf_counter() - start - calibration}

