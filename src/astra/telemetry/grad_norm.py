"""Gradient-norm telemetry: global L2 norm every optimizer step, per module type / factor at an interval."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from astra.telemetry.base import BufferedMetricsCallback
from astra.telemetry.naming import FACTORS, order_types, param_type_and_factor


def _foreach_norms(grads: list[Tensor]) -> Tensor:
    """Per-tensor L2 norms as one float32 vector: one fused ``_foreach_norm`` per device (no host sync)."""
    devices = {g.device for g in grads}
    low_precision = any(g.dtype not in (torch.float32, torch.float64) for g in grads)
    kwargs = {"dtype": torch.float32} if low_precision else {}
    if len(devices) == 1:
        return torch.stack(torch._foreach_norm(grads, 2.0, **kwargs)).float()
    # Model split over devices: norms per device group, gathered on the first device, original order kept.
    first = grads[0].device
    out: list[Tensor | None] = [None] * len(grads)
    for device in devices:
        index = [i for i, g in enumerate(grads) if g.device == device]
        norms = torch._foreach_norm([grads[i] for i in index], 2.0, **kwargs)
        for i, n in zip(index, norms):
            out[i] = n.float().to(first)
    return torch.stack(out)


class GradNormMonitor(BufferedMetricsCallback):
    """L2 norms of the trainable gradients, after AMP unscaling and before clipping.

    Runs in ``on_before_optimizer_step`` (Lightning calls it after the closure/backward and the AMP
    unscale, before gradient clipping; with gradient accumulation once per optimizer step, over the
    accumulated gradient). Metrics, at the step's index:

    - ``grad/norm``: global norm over all trainable parameters, every optimizer step;
    - ``grad/type/{t}`` (e.g. ``q``, ``gate``, ``query``), ``grad/factor/{f}`` (``A``, ``B``, DoRA magnitude
      ``m``, full weight ``W``) and ``grad/type/{t}/{f}``: at steps ``i < per_type_first_n_steps`` and every
      ``per_type_every_n_steps`` steps (``i % n == 0``); 0 disables.

    Cost per step: one fused ``torch._foreach_norm`` over the gradients, one ``stack``, one vector norm, no
    host sync (values are flushed in batches). Interval steps add one ``index_add_`` per grouping.
    Under DDP the gradients are already all-reduced, so every rank sees the global norm (FSDP/sharded
    gradients are not supported: each rank would see its shard).

    Summary: ``grad_norm_mean_first{N}`` (mean of the finite global norms over the first ``N`` optimizer
    steps, ``N = summary_first_n_steps``), ``grad_norm_mean`` (all steps), ``grad_norm_nonfinite_steps``.
    """

    def __init__(
        self,
        per_type_every_n_steps: int = 25,
        per_type_first_n_steps: int = 10,
        summary_first_n_steps: int = 100,
        log_type_factor: bool = True,
        flush_every_n_steps: int = 25,
    ) -> None:
        super().__init__(flush_every_n_steps)
        self.per_type_every_n_steps = int(per_type_every_n_steps)
        self.per_type_first_n_steps = int(per_type_first_n_steps)
        self.summary_first_n_steps = int(summary_first_n_steps)
        self.log_type_factor = log_type_factor
        self._index: dict[str, Any] | None = None
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._sum_first: Tensor | None = None
        self._finite_first: Tensor | None = None
        self._sum_all: Tensor | None = None
        self._finite_all: Tensor | None = None
        self._steps = 0

    # ------------------------------------------------------------------ parameter index
    def _build_index(self, pl_module: pl.LightningModule) -> dict[str, Any]:
        names, params, types, factors = [], [], [], []
        for name, param in pl_module.named_parameters():
            if param.requires_grad:
                module_type, factor = param_type_and_factor(name)
                names.append(name)
                params.append(param)
                types.append(module_type)
                factors.append(factor)
        type_names = order_types(types)
        factor_names = [f for f in FACTORS if f in factors] + sorted(set(factors) - set(FACTORS))
        pairs = list(dict.fromkeys(zip(types, factors)))
        pairs.sort(key=lambda tf: (type_names.index(tf[0]), factor_names.index(tf[1])))
        return {
            "params": params,
            "type_of": [type_names.index(t) for t in types],
            "factor_of": [factor_names.index(f) for f in factors],
            "pair_of": [pairs.index(tf) for tf in zip(types, factors)],
            "type_names": [f"grad/type/{t}" for t in type_names],
            "factor_names": [f"grad/factor/{f}" for f in factor_names],
            "pair_names": [f"grad/type/{t}/{f}" for t, f in pairs],
            "device_index": {},  # device -> (type, factor, pair) index tensors for the all-present case
        }

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._index = None  # the trainable set may change between fits
        self._reset_stats()

    # ------------------------------------------------------------------ the hook
    def _wants_per_type(self, step: int) -> bool:
        return step < self.per_type_first_n_steps or (
            self.per_type_every_n_steps > 0 and step % self.per_type_every_n_steps == 0
        )

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self._index is None:
            self._index = self._build_index(pl_module)
        index = self._index
        present = [i for i, p in enumerate(index["params"]) if p.grad is not None and not p.grad.is_sparse]
        if not present:
            return
        grads = [index["params"][i].grad for i in present]
        norms = _foreach_norms(grads)
        total = torch.linalg.vector_norm(norms)
        step = trainer.global_step
        self._accumulate(total, step)
        self._record(trainer, step, {"grad/norm": total})
        if self._wants_per_type(step):
            self._record_groups(trainer, step, norms, present)

    def _accumulate(self, total: Tensor, step: int) -> None:
        finite = torch.isfinite(total)
        value = torch.where(finite, total, torch.zeros_like(total))
        finite = finite.float()
        if self._sum_all is None:
            self._sum_all, self._finite_all = value, finite
        else:
            self._sum_all = self._sum_all + value
            self._finite_all = self._finite_all + finite
        if self._steps < self.summary_first_n_steps:
            self._sum_first, self._finite_first = self._sum_all, self._finite_all
        self._steps += 1

    def _group_index(self, device: torch.device, present: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = self._index
        if len(present) == len(index["params"]):
            cached = index["device_index"].get(device)
            if cached is None:
                cached = tuple(
                    torch.tensor(index[key], dtype=torch.long).to(device, non_blocking=True)
                    for key in ("type_of", "factor_of", "pair_of")
                )
                index["device_index"][device] = cached
            return cached
        return tuple(
            torch.tensor([index[key][i] for i in present], dtype=torch.long).to(device, non_blocking=True)
            for key in ("type_of", "factor_of", "pair_of")
        )

    def _record_groups(self, trainer: pl.Trainer, step: int, norms: Tensor, present: list[int]) -> None:
        index = self._index
        squared = norms.square()
        type_idx, factor_idx, pair_idx = self._group_index(norms.device, present)
        groups = [(type_idx, index["type_names"]), (factor_idx, index["factor_names"])]
        if self.log_type_factor:
            groups.append((pair_idx, index["pair_names"]))
        vectors, names = [], []
        for idx, group_names in groups:
            vectors.append(squared.new_zeros(len(group_names)).index_add_(0, idx, squared).sqrt())
            names.extend(group_names)
        self._record_vector(trainer, step, names, torch.cat(vectors))

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._sum_first is not None:
            first = float(self._finite_first)
            out[f"grad_norm_mean_first{self.summary_first_n_steps}"] = (
                float(self._sum_first) / first if first else float("nan")
            )
            count = float(self._finite_all)
            out["grad_norm_mean"] = float(self._sum_all) / count if count else float("nan")
            out["grad_norm_nonfinite_steps"] = int(self._steps - count)
        return out
