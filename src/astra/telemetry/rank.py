"""Effective-rank telemetry of adapter updates (LoRA family) or of ``W - W0`` (full fine-tuning)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from astra.models.adapters import ADAPTER, lora_layers
from astra.telemetry.base import BufferedMetricsCallback
from astra.telemetry.effective_rank import (
    dense_singular_values,
    effective_rank,
    lowrank_singular_values,
    spectrum_from_eigenvalues,
    stable_rank,
)
from astra.telemetry.naming import module_type, order_types, short_layer_name

log = logging.getLogger(__name__)

MOMENT_KEY = "_moment_eigenvalues"


# ---------------------------------------------------------------------- pure-ish helpers
def _adapter_factors(layer: nn.Module, adapter: str) -> tuple[Tensor, Tensor, float] | None:
    """``(A, B, scaling)`` of one PEFT LoRA layer as 2-D matrices (``r x d_in``, ``d_out x r``), or None."""
    scaling = float(layer.scaling[adapter]) if adapter in getattr(layer, "scaling", {}) else 1.0
    if adapter in getattr(layer, "lora_A", {}):
        A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        # Linear: A (r, d_in), B (d_out, r). Conv: A (r, c_in, k..), B (c_out, r, 1..) -> flatten.
        return A.flatten(1), B.flatten(1), scaling
    if adapter in getattr(layer, "lora_embedding_A", {}):
        # Embedding: A (r, num_embeddings), B (dim, r); the update (B @ A)^T has the same spectrum.
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter], scaling
    return None


@torch.no_grad()
def adapter_spectra(model: nn.Module, adapter: str = ADAPTER) -> tuple[list[str], list[Tensor]]:
    """Singular values of every adapter update ``dW = s * B @ A`` (one batched QR/SVD per shape group).

    For DoRA, ``dW`` is still ``s * B @ A``: DoRA's magnitude vector rescales the per-output-feature norms
    of ``W0 + s * B @ A``; it is not part of the low-rank direction update whose rank we report. For residual inits (PiSSA, LoRA-GA,
    Astra) it is the adapter's whole contribution ``s * B @ A``, not its change since initialisation.
    Returns ``(layer_names, spectra)`` in model order; ``spectra[i]`` lives on the layer's device.
    """
    names, factors = [], []
    for name, layer in lora_layers(model):
        found = _adapter_factors(layer, adapter)
        if found is not None:
            names.append(name)
            factors.append(found)
    spectra: list[Tensor | None] = [None] * len(names)
    groups: dict[tuple, list[int]] = {}
    for i, (A, B, _) in enumerate(factors):
        groups.setdefault((tuple(A.shape), tuple(B.shape), A.device, B.device), []).append(i)
    for (_, _, device, _), members in groups.items():
        A = torch.stack([factors[i][0].to(device=device, dtype=torch.float32) for i in members])
        B = torch.stack([factors[i][1].to(device=device, dtype=torch.float32) for i in members])
        scale = torch.tensor([factors[i][2] for i in members], dtype=torch.float32).to(device)
        values = lowrank_singular_values(A, B, scale)
        for row, i in enumerate(members):
            spectra[i] = values[row]
    return names, spectra


def rank_metrics(layer_names: Sequence[str], values: Sequence[float], base: str = "rank/eff", per_layer: bool = True) -> dict[str, float]:
    """``{base}/mean``, ``{base}/type/{t}`` (mean over the layers of type ``t``) and, if ``per_layer``,
    ``{base}/layer/{short layer name}``."""
    values = [float(v) for v in values]
    if not values:
        return {}
    out = {f"{base}/mean": sum(values) / len(values)}
    types = [module_type(name) for name in layer_names]
    for t in order_types(types):
        chosen = [v for v, vt in zip(values, types) if vt == t]
        out[f"{base}/type/{t}"] = sum(chosen) / len(chosen)
    if per_layer:
        for name, v in zip(layer_names, values):
            out[f"{base}/layer/{short_layer_name(name)}"] = v
    return out


def moment_rank_metrics(report: Mapping[str, Any] | None, prefix: str = "rank/moment", per_layer: bool = True) -> dict[str, float]:
    """Effective ranks of the calibration moment matrices in an init report.

    ``report["_moment_eigenvalues"]`` maps layer names to 1-D eigenvalue tensors of symmetric PSD matrices
    (their singular values; round-off negatives are clamped to 0). Returns ``{prefix}/mean``,
    ``{prefix}/type/{t}`` and ``{prefix}/layer/{short name}``; empty when the method collected none.
    """
    moments = (report or {}).get(MOMENT_KEY) or {}
    names = list(moments)
    ranks = [float(effective_rank(spectrum_from_eigenvalues(moments[n]).double())) for n in names]
    return rank_metrics(names, ranks, base=prefix, per_layer=per_layer)


# ---------------------------------------------------------------------- callback
class EffectiveRankMonitor(BufferedMetricsCallback):
    """Effective rank (Roy & Vetterli) and stable rank of each adapter update ``dW = s * B @ A``.

    Computed from QR of ``B`` and ``A^T`` and the SVD of the ``r x r`` core (never the ``d_out x d_in``
    matrix), batched over layers of one shape, at ``k = 0`` (before training, ``at_start``), after every
    ``every_n_steps`` optimizer steps, and at the end of training (``at_end``), logged at step ``k``:
    ``rank/eff/{mean, type/{t}, layer/{name}}`` and ``rank/stable/...``. For DoRA ``dW`` is still
    ``s * B @ A`` (the magnitude vector is not part of the low-rank update).

    Full fine-tuning (no LoRA layer found, or ``full_ft_patterns`` given): the rank of ``W - W0`` for a
    subset of weight matrices: those whose module names match ``full_ft_patterns`` (``fnmatch``), else
    ``full_ft_max_layers`` ``nn.Linear`` layers evenly spread over the model (``lm_head`` excluded).
    ``W0`` is copied to CPU at ``on_fit_start`` for just those layers (a resumed run's ``W0`` is the
    resumed weight). These use dense SVDs: keep the subset small.

    The init report (``set_init_report``) may carry ``_moment_eigenvalues``; their effective ranks are
    logged at step 0 as ``rank/moment/...``. Rank work runs on global rank 0 only.

    Summary: ``final_effective_rank_mean``, ``final_stable_rank_mean``, ``init_effective_rank_mean``,
    ``moment_effective_rank_mean``.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        at_start: bool = True,
        at_end: bool = True,
        per_layer: bool = True,
        full_ft_patterns: Sequence[str] | None = None,
        full_ft_max_layers: int = 4,
        adapter_name: str = ADAPTER,
        flush_every_n_steps: int = 25,
        init_report: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(flush_every_n_steps)
        self.every_n_steps = int(every_n_steps)
        self.at_start = at_start
        self.at_end = at_end
        self.per_layer = per_layer
        self.full_ft_patterns = list(full_ft_patterns) if full_ft_patterns else None
        self.full_ft_max_layers = int(full_ft_max_layers)
        self.adapter_name = adapter_name
        self.init_report = init_report
        self._w0: dict[str, Tensor] = {}
        self._modules: dict[str, nn.Module] = {}
        self._last_step: int | None = None
        self._last_global_step = 0
        self.first: dict[str, float] = {}
        self.moment: dict[str, float] = {}

    def set_init_report(self, report: Mapping[str, Any] | None) -> None:
        self.init_report = report

    # ------------------------------------------------------------------ full fine-tuning snapshot
    def _select_full_ft(self, pl_module: nn.Module) -> dict[str, nn.Module]:
        candidates = [
            (name, module)
            for name, module in pl_module.named_modules()
            if isinstance(module, nn.Linear) and module.weight.requires_grad and module_type(name) != "lm_head"
            and ".lora_" not in name and not name.endswith("base_layer")
        ]
        if self.full_ft_patterns:
            return {
                n: m for n, m in candidates
                if any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(short_layer_name(n), p) for p in self.full_ft_patterns)
            }
        k = min(self.full_ft_max_layers, len(candidates))
        if k <= 0:
            return {}
        picks = sorted({round(i * (len(candidates) - 1) / max(k - 1, 1)) for i in range(k)})
        return dict(candidates[i] for i in picks)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._w0, self._modules = {}, {}
        self._last_step = None
        has_lora = any(True for _ in lora_layers(pl_module))
        if not has_lora or self.full_ft_patterns:
            self._modules = self._select_full_ft(pl_module)
            self._w0 = {n: m.weight.detach().to("cpu", copy=True) for n, m in self._modules.items()}

    # ------------------------------------------------------------------ computation
    @torch.no_grad()
    def compute(self, pl_module: nn.Module) -> dict[str, float]:
        """Current rank metrics of the module (adapters and the full-FT subset)."""
        names, spectra = adapter_spectra(pl_module, self.adapter_name)
        for name, module in self._modules.items():
            weight = module.weight
            names.append(name)
            spectra.append(dense_singular_values(weight.float() - self._w0[name].to(weight.device).float()))
        if not names:
            return {}
        eranks, sranks = [], []
        for spectrum in spectra:  # spectra of different lengths; small vectors
            eranks.append(effective_rank(spectrum))
            sranks.append(stable_rank(spectrum))
        values = torch.stack([torch.stack(eranks), torch.stack(sranks)]).cpu().tolist()  # one sync
        metrics = rank_metrics(names, values[0], base="rank/eff", per_layer=self.per_layer)
        metrics.update(rank_metrics(names, values[1], base="rank/stable", per_layer=self.per_layer))
        return metrics

    def _log_ranks(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        if self._last_step == step or not trainer.is_global_zero:
            return
        self._last_step = step
        metrics = self.compute(pl_module)
        if step == 0 and not self.first:
            self.first = metrics
        self._record(trainer, step, metrics)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_global_step = trainer.global_step
        if trainer.is_global_zero and trainer.global_step == 0:
            self.moment = moment_rank_metrics(self.init_report, per_layer=self.per_layer)
            self._record(trainer, 0, self.moment)
        if self.at_start:
            self._log_ranks(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last_global_step:
            self._last_global_step = step
            if self.every_n_steps > 0 and step % self.every_n_steps == 0:
                self._log_ranks(trainer, pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_end:
            self._log_ranks(trainer, pl_module, trainer.global_step)
        super().on_train_end(trainer, pl_module)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in (("rank/eff/mean", "final_effective_rank_mean"), ("rank/stable/mean", "final_stable_rank_mean")):
            if key in self.latest:
                out[name] = self.latest[key]
        if "rank/eff/mean" in self.first:
            out["init_effective_rank_mean"] = self.first["rank/eff/mean"]
        if "rank/moment/mean" in self.moment:
            out["moment_effective_rank_mean"] = self.moment["rank/moment/mean"]
        return out
