"""method=head_only: the control arm of an encoder comparison. No adapter; only the classification head trains
(the new classifier, plus the model's ``head_modules``, e.g. BERT's pooler), exactly the modules every adapter arm
also trains in full (PEFT ``modules_to_save``). An adapter arm's score minus this row's is what the adapters add."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from astra.methods.base import InitContext

# The new head a sequence-classification model gets from transformers: ``classifier`` (BERT, RoBERTa, DeBERTa) or
# ``score`` (decoders); PEFT's SEQ_CLS task type trains the same two names in full under every adapter.
CLASSIFIER_NAMES = ("classifier", "score")


def trainable_head_names(model: nn.Module, head_modules: Sequence[str]) -> list[str]:
    """The parameters that train: those under a module named like the classifier or one of ``head_modules``."""
    wanted = set(CLASSIFIER_NAMES) | set(head_modules)
    return [name for name, _ in model.named_parameters() if wanted & set(name.split(".")[:-1])]


def head_only_init(
    model: nn.Module, calibration_loader, context: InitContext, head_modules: Sequence[str] = ()
) -> dict:
    """Freeze every parameter, then let the head train; refuses a model without a classification head (a causal
    LM's next-token head is the pretrained output layer, not a new head: nothing would be a control there)."""
    names = set(trainable_head_names(model, head_modules or ()))
    if not any(set(name.split(".")[:-1]) & set(CLASSIFIER_NAMES) for name in names):
        raise ValueError(
            "method=head_only trains a new classification head, and this model has none (no module named "
            f"{' or '.join(CLASSIFIER_NAMES)}): use it with a classification task (task.family=glue, e.g. task=qnli)"
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    modules = sorted({".".join(n.split(".")[:-1]) for n in names})
    return {"trainable_modules": modules}
