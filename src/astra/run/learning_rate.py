"""Where a run's learning rate came from. The default is ``optim.lr = model.lr x method.lr_scale`` (the model's
rate for LoRA, scaled per method: inits that start with a large adapter product need lower rates, see
docs/methods.md#learning-rates); ``optim.lr=<rate>`` on the command line, or an experiment that sets its own rates,
replaces the product entirely."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

SCALED_RESOLVER = "astra_scaled"  # ${astra_scaled:${model.lr},${method.lr_scale}}, registered by hydra_support


def scaled(rate: Any, factor: Any) -> float:
    """``rate x factor``, rounded to 12 significant digits so 5e-4 x 0.1 reads 5e-05, not 5.000000000000001e-05."""
    return float(f"{float(rate) * float(factor):.12g}")


def learning_rate_source(cfg: DictConfig) -> str:
    """A short account of how ``optim.lr`` was set (and the head's own rate, if any), for the console and the
    result file."""
    head_lr = cfg.optim.get("head_lr")
    head = f"; the classification head at optim.head_lr {float(head_lr):.3g}" if head_lr is not None else ""
    raw = OmegaConf.to_container(cfg.optim, resolve=False).get("lr")
    if isinstance(raw, str) and SCALED_RESOLVER in raw:
        return f"model.lr {float(cfg.model.lr):.3g} x method.lr_scale {float(cfg.method.lr_scale):g}" + head
    if isinstance(raw, str):
        return f"optim.lr: {raw}" + head  # an experiment's own rule, e.g. ${glue_lr.${method.name}} or ${model.lr}
    return "optim.lr given" + head


def learning_rate_facts(cfg: DictConfig) -> dict[str, Any]:
    return {"value": float(cfg.optim.lr), "source": learning_rate_source(cfg)}
