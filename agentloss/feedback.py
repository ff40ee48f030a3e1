"""Text feedback: objectives whose result at a stage end is a sentence, not a number.

The paper's agent can take "textual description" feedback, from a person or a multimodal quality
model ("textures look too smooth"). A ``TextFeedback`` is passed in ``objectives=`` like any
objective; at each stage end it describes the restored probe set, and what it says is recorded in
``StageRecord.texts`` and shown to language-model agents in the history part of their prompt
(numbers-only agents ignore it). A source that raises is a recorded error for that stage; it never
stops training or blocks the decision.

Example:
    >>> import torch
    >>> critic = CallableFeedback(lambda imgs, refs: "too dark" if imgs[0].mean() < 0.3 else "fine", name="look")
    >>> critic.describe([torch.zeros(1, 3, 8, 8)]), critic.info().kind
    ('too dark', 'text')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from .types import ObjectiveInfo

__all__ = ["MAX_TEXT_CHARS", "CallableFeedback", "TextFeedback", "clean_text", "is_text_objective"]

MAX_TEXT_CHARS = 1000  # one stage's feedback in the prompt: a few sentences, never a document
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: object) -> str:
    """Feedback as prompt-safe text: a string, control characters removed, at most ``MAX_TEXT_CHARS``.

    >>> clean_text("  noisy\\x1b[31m grain ") , len(clean_text("x" * 5000))
    ('noisy[31m grain', 1000)
    """
    if not isinstance(text, str):
        raise TypeError(f"text feedback must be a string, got {type(text).__name__}")
    text = _CONTROL.sub("", text).strip()
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def is_text_objective(obj: object) -> bool:
    return getattr(obj, "kind", "score") == "text"


class TextFeedback:
    """Base class: a name, a description (what the source judges), and ``describe`` per stage end.

    Subclasses implement ``describe(restored, references)``; ``prepare()`` loads what they need (the
    scheduler calls it before training, so a source that cannot work fails early).
    """

    kind = "text"
    name: str = "feedback"
    description: str = ""
    needs_reference: bool = False

    def prepare(self) -> None:
        """Nothing to load here."""

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        raise NotImplementedError

    def info(self) -> ObjectiveInfo:
        # higher_is_better has no meaning for text; kind tells agents not to read a direction.
        return ObjectiveInfo(self.name, True, self.description, None, self.needs_reference, kind="text")


class CallableFeedback(TextFeedback):
    """A user function ``fn(restored, references) -> str`` as a text source (``references`` is ``None``
    unless ``needs_reference``)."""

    def __init__(self, fn: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor] | None], str], *, name: str,
                 description: str = "", needs_reference: bool = False):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name
        self.description = description or f"text feedback from {name}"
        self.needs_reference = needs_reference

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        return self.fn(restored, references)
