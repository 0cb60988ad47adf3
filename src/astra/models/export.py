"""What a run leaves behind besides its result file: the trained adapter in PEFT format and, for residual methods
(PiSSA, LoRA-GA, Astra), the initial adapter and the trained one converted to a plain LoRA on the original base."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def check_export_supported(method: DictConfig) -> None:
    """Refuse, before any work, combinations whose export would silently lose trained weights."""
    if method.get("residual") and method.peft is not None and method.peft.get("use_dora"):
        raise ValueError(
            f"method {method.name} changes the base weight and uses DoRA; converting its adapter to a plain "
            "LoRA on the original model (PEFT path_initial_model_for_weight_conversion) would silently drop "
            "the trained DoRA magnitude. Use method.peft.use_dora=false, or a non-residual method with DoRA."
        )


def save_initial_adapter(cfg: DictConfig, model, run_dir: Path) -> Path | None:
    """Residual methods: save the adapter as initialised, so the trained one can be converted later.

    Saved with ``init_lora_weights=True`` in its config, as PEFT's conversion requires (loading it must not
    re-run the decomposition)."""
    if cfg.method.peft is None or not cfg.method.get("residual"):
        return None
    peft_config = model.peft_config["default"]
    original = peft_config.init_lora_weights
    peft_config.init_lora_weights = True
    try:
        model.save_pretrained(str(run_dir / "adapter_init"))
    finally:
        peft_config.init_lora_weights = original
    return run_dir / "adapter_init"


def export_adapter(cfg: DictConfig, model, run_dir: Path) -> dict[str, str]:
    """Save the trained adapter in PEFT format (``adapter/``, loads on the residual base for residual
    methods); for residual methods also ``adapter_converted/``: a plain rank-2r LoRA that loads on the
    ORIGINAL base model. Full fine-tuning saves nothing (7B checkpoints are not wanted by default)."""
    if cfg.method.peft is None:
        return {}
    exported = {"adapter": str(run_dir / "adapter")}
    model.save_pretrained(exported["adapter"])
    initial = run_dir / "adapter_init"
    if cfg.method.get("residual"):
        exported["adapter_init"] = str(initial)
        exported["adapter_converted"] = str(run_dir / "adapter_converted")
        model.save_pretrained(exported["adapter_converted"], path_initial_model_for_weight_conversion=str(initial))
    return exported
