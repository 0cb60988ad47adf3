"""The one value every family produces and every batch builder reads; its own module so that ``base`` (the
families' seam) and ``batches`` (the default batch builder) both import it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the training target
    reference: Any  # what evaluation compares against (a number, a \boxed{} answer, a choice index, ...)
    meta: dict = field(default_factory=dict)
