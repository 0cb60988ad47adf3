"""The LightningModule. It holds nothing method-specific: every method arrives as an initialised model."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

CHECKPOINT_KEY = "astra"  # our extra state inside a Lightning checkpoint


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or Inf; ``step`` is the 1-based optimizer step whose loss it was."""

    def __init__(self, step: int, loss: float, micro_batch: int | None = None):
        self.step, self.loss, self.micro_batch = step, loss, micro_batch
        where = f" (micro-batch {micro_batch})" if micro_batch is not None else ""
        super().__init__(
            f"training diverged at step {step}: loss={loss}{where}; lower optim.lr, or check the data and the init"
        )


def cosine_with_warmup(total_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over ceil(warmup_ratio * total) steps, then cosine to zero."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def rng_states() -> dict[str, Any]:
    """Every RNG's state, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.copy()), "pos": position, "has_gauss": has_gauss, "gauss": gauss}
    states = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy(), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# PEFT keeps a trainable copy of each fully trained module (the new classifier, BERT's pooler) under this name.
HEAD_MARKER = ".modules_to_save."


class CausalLMModule(pl.LightningModule):
    """Next-token loss on prompt-masked labels; AdamW over trainable parameters; cosine schedule.

    A non-finite loss stops training with :class:`TrainingDivergedError` naming the exact step. The check reads
    the losses every ``check_finite_every_n_steps`` micro-batches (one host sync per check, so on a GPU it need
    not sync every step) and once more at the end of training.

    Checkpoints hold only the trainable parameters (never the frozen base model), the loss history and the RNG
    states; Lightning adds the optimizer, scheduler and loop progress; the data module adds the data position.
    """

    def __init__(self, model: nn.Module, optim: Any, check_finite_every_n_steps: int = 1):
        super().__init__()
        self.model = model
        self.optim = optim
        self.check_every = max(1, int(check_finite_every_n_steps))
        # Detached per-micro-batch losses, read at checks and once after fitting (no host sync per step).
        self.step_losses: list[torch.Tensor] = []
        self._checked = 0  # losses before this index are known to be finite
        self._restored_losses: list[float] = []
        self._rng_to_restore: dict[str, Any] | None = None
        self.resumed_from_step: int | None = None
        # Partial state dicts (trainable parameters only) load without complaint; on_load_checkpoint checks them.
        self.strict_loading = False

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.step_losses.append(loss.detach())
        if len(self.step_losses) - self._checked >= self.check_every:
            self.check_finite()  # before backward: a NaN loss never reaches the weights at check points
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_train_end(self) -> None:
        self.check_finite()

    def check_finite(self) -> None:
        """Raise :class:`TrainingDivergedError` at the first non-finite loss not yet checked."""
        if self._checked >= len(self.step_losses):
            return
        window = torch.stack(self.step_losses[self._checked :])
        finite = torch.isfinite(window)
        if bool(finite.all()):
            self._checked = len(self.step_losses)
            return
        offset = int((~finite).nonzero()[0, 0])
        raise self.divergence_error(len(self._restored_losses) + self._checked + offset, float(window[offset]))

    def divergence_error(self, micro_index: int, loss: float) -> TrainingDivergedError:
        accumulate = max(1, int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)) if self._trainer else 1
        return TrainingDivergedError(micro_index // accumulate + 1, loss, micro_index + 1 if accumulate > 1 else None)

    def first_divergence(self) -> TrainingDivergedError | None:
        """The divergence hidden in the loss history, if any (used when another error stopped the run first)."""
        history = self.loss_history()
        for index, value in enumerate(history):
            if not math.isfinite(value):
                return self.divergence_error(index, value)
        return None

    def validation_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group at ``optim.lr``; with ``optim.head_lr``, the classification head (PEFT's ``modules_to_save``
        copies: the new classifier and the model's ``head_modules``) in a second group at that rate, so an arm's
        tuned rate moves its adapters and not how fast a freshly initialised head learns."""
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError("the model has no trainable parameters; check method.peft.target_modules")
        head_lr = self.optim.get("head_lr")
        if head_lr is None:
            return [{"params": [p for _, p in named]}]
        head = [p for name, p in named if HEAD_MARKER in name]
        rest = [p for name, p in named if HEAD_MARKER not in name]
        if not head or not rest:
            raise RuntimeError(f"optim.head_lr={head_lr} needs an adapter and a separately trained head; this model "
                               f"has {len(head)} head and {len(rest)} other trainable tensors (set optim.head_lr=null)")  # fmt: skip
        return [{"params": rest}, {"params": head, "lr": float(head_lr)}]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameter_groups(),
            lr=self.optim.lr,
            weight_decay=self.optim.weight_decay,
            betas=tuple(self.optim.betas),
            eps=self.optim.eps,
        )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, self.optim.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def loss_history(self) -> list[float]:
        """Per-micro-batch training losses as floats (one host transfer), including those before a resume."""
        if not self.step_losses:
            return list(self._restored_losses)
        return self._restored_losses + torch.stack(self.step_losses).float().cpu().tolist()

    # ------------------------------------------------------------------ checkpoints
    def trainable_names(self) -> set[str]:
        return {name for name, parameter in self.named_parameters() if parameter.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[CHECKPOINT_KEY] = {"loss_history": self.loss_history(), "rng": rng_states()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved, trainable = set(checkpoint["state_dict"]), self.trainable_names()
        if saved != trainable:
            missing, unexpected = sorted(trainable - saved)[:5], sorted(saved - trainable)[:5]
            raise ValueError(
                "the checkpoint's trainable parameters do not match this run's model (was the config changed?); "
                f"missing from the checkpoint: {missing}, not in the model: {unexpected}"
            )
        self.resumed_from_step = int(checkpoint.get("global_step", 0))
        extra = checkpoint.get(CHECKPOINT_KEY, {})
        self._restored_losses = list(extra.get("loss_history", []))
        self.step_losses, self._checked = [], 0
        self._rng_to_restore = extra.get("rng")

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:  # here, after everything that set up training drew random numbers
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


class SequenceClassificationModule(CausalLMModule):
    """Classification / regression on a sequence-classification model (GLUE): the model's own loss (cross-entropy,
    or mean squared error when ``problem_type`` is regression); validation also logs accuracy (classification),
    the figure learning-rate selection reads."""

    def validation_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        output = self.model(**batch)
        size = batch["input_ids"].shape[0]
        self.log("val/loss", output.loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        if output.logits.shape[-1] > 1:
            accuracy = (output.logits.argmax(-1) == batch["labels"]).float().mean()
            self.log("val/accuracy", accuracy, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return output.loss
