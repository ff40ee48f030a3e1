"""Fitting a prompt to the model: the messages of one decision, shortened to the context window.

``fit_history`` keeps the whole history while it fits (with room for the answer and a retry) and
otherwise drops the oldest stages, S0 and the newest always kept, saying in the prompt which were
left out. Token counts come from the backend when it can count, else from a 4-characters estimate.

Dropping stages rewrites the prompt right after S0, and a runtime that keeps its KV cache
(llama.cpp) must then evaluate everything after that again. So the oldest stages are dropped in
blocks (``drop_block``: a power of two, a quarter to a half of the stages that fit), counted from
the first stage, and the note says only which stages are left out: the prompt's start then stays
the same until the next block has to go. That is one full evaluation per block of decisions
instead of one at every decision, for showing at least half (on average about three quarters) of
the stages that would fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..types import DecisionContext
from .paper import PromptTemplates, prompt_variables

__all__ = ["Message", "build_messages", "drop_block", "estimate_tokens", "fit_history", "reserve_tokens"]

Message = dict[str, str]


def _messages(templates: PromptTemplates, variables: Mapping[str, Any]) -> list[Message]:
    system = templates.render("system", variables)
    history = templates.render("history", variables)
    needs = templates.render("needs", variables)
    return [{"role": "system", "content": system}, {"role": "user", "content": history + "\n\n" + needs}]


def _windowed(variables: dict[str, Any], keep: int, reason: str) -> tuple[dict[str, Any], str | None]:
    stages = variables["stages"]
    if keep >= len(stages):
        return variables, None
    keep = max(1, keep)
    dropped, kept = stages[:-keep], stages[-keep:]
    # The note names only what is left out, not the newest stage: it stays the same from one decision
    # to the next, and so does the prompt up to the newest stage (the KV cache stays valid).
    note = (f"{_span(dropped)} left out {reason}; S0 and the stages after "
            f"{'it' if len(dropped) == 1 else 'them'} are shown" if dropped else None)
    return {**variables, "stages": kept, "omitted_note": note}, note


def drop_block(fits: int) -> int:
    """How many of the oldest stages go at a time when ``fits`` newest stages would fit: the largest
    power of two not above half of them (at least 1). A power of two, so that the small changes of
    ``fits`` from one decision to the next rarely change the block, and with it where the cut is.

    Example:
        >>> [drop_block(n) for n in (1, 4, 7, 8, 30, 60, 64)]
        [1, 2, 2, 4, 8, 16, 32]
    """
    return 1 << (max(1, fits // 2).bit_length() - 1)


def _span(rows: list[dict[str, Any]]) -> str:
    a, b = rows[0]["stage"], rows[-1]["stage"]
    return f"Stage {a} is" if a == b else f"Stages {a} to {b} are"


def build_messages(
    context: DecisionContext,
    templates: PromptTemplates | Mapping[str, Any] | None = None,
    *,
    needs_text: str | None = None,
    history_window: int | None = None,
    loss_descriptions: Mapping[str, str] | None = None,
) -> list[Message]:
    """The chat messages for one decision: ``[system, user(history + needs)]``.

    ``history_window`` keeps only the latest N stages (S0 always stays) and says so in the prompt.

    Example:
        >>> from agentloss.prompts import sample_context
        >>> msgs = build_messages(sample_context(), history_window=1)
        >>> "[Stage 1 is left out (the history window is 1 stage(s)); S0 and the stages after it are shown]" in msgs[1]["content"]
        True
    """
    messages, _ = fit_history(context, templates, needs_text=needs_text, history_window=history_window,
                              loss_descriptions=loss_descriptions)
    return messages


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A rough token count when the backend cannot count: 4 characters a token, plus 4 a message.

    Example:
        >>> estimate_tokens([{"role": "user", "content": "x" * 40}])
        14
    """
    return sum(math.ceil(len(m.get("content", "")) / 4) + 4 for m in messages)


def reserve_tokens(max_tokens: int, max_tries: int = 1) -> int:
    """Tokens to keep free besides the prompt: the answer, and for a retry the previous answer plus
    the correction (a retry sends the prompt, the last answer and a short correction).

    Example:
        >>> reserve_tokens(200, 1), reserve_tokens(200, 3)
        (200, 550)
    """
    extra = max_tokens + 150 if max_tries > 1 else 0
    return int(max_tokens) + extra


def fit_history(
    context: DecisionContext,
    templates: PromptTemplates | Mapping[str, Any] | None = None,
    *,
    needs_text: str | None = None,
    backend: Any = None,
    context_size: int | None = None,
    count_tokens: Callable[[list[Message]], int | None] | None = None,
    reserve: int = 256,
    history_window: int | None = None,
    loss_descriptions: Mapping[str, str] | None = None,
) -> tuple[list[Message], str | None]:
    """Messages with as much history as fits, and a note (for the record) of what was left out.

    The whole history is kept while ``prompt tokens + reserve <= context_size``; otherwise the
    oldest stages are dropped, in blocks of ``drop_block(stages that fit)`` counted from the first
    stage (so that the prompt's start stays the same over many decisions; S0 and the newest stage
    always stay), the prompt says which stages are left out, and the same sentence is returned. ``context_size``/``count_tokens`` default to
    the backend's; a count of ``None`` (or an error) falls back to ``estimate_tokens``. With no
    context size the history is not shortened (except by ``history_window``).

    Example:
        >>> from agentloss.prompts import sample_context
        >>> ctx = sample_context()
        >>> full, note = fit_history(ctx)
        >>> note is None
        True
        >>> short, note = fit_history(ctx, context_size=estimate_tokens(full) - 5, reserve=0)
        >>> note
        "Stage 1 is left out to fit the model's context window; S0 and the stages after it are shown"
    """
    tmpl = PromptTemplates.coerce(templates)
    variables = prompt_variables(context, needs_text=needs_text, loss_descriptions=loss_descriptions)
    n_stages = len(variables["stages"])
    window_note = None
    if history_window is not None and n_stages > max(1, int(history_window)):
        variables, window_note = _windowed(variables, int(history_window),
                                           f"(the history window is {max(1, int(history_window))} stage(s))")
        variables["omitted_note"] = window_note
        n_stages = len(variables["stages"])

    if backend is not None:
        if context_size is None:
            context_size = getattr(backend, "context_size", None)
        if count_tokens is None:
            count_tokens = getattr(backend, "count_tokens", None)

    def tokens(msgs: list[Message]) -> int:
        if count_tokens is not None:
            try:
                n = count_tokens(msgs)
            except Exception:  # noqa: BLE001
                n = None
            if n is not None:
                return int(n)
        return estimate_tokens(msgs)

    full = _messages(tmpl, variables)
    if not context_size or n_stages <= 1 or tokens(full) + reserve <= context_size:
        return full, window_note

    budget = int(context_size) - int(reserve)
    reason = "to fit the model's context window"

    def attempt(keep: int) -> tuple[list[Message], str | None]:
        v, note = _windowed(variables, keep, reason)
        return _messages(tmpl, v), note

    lo, hi = 1, n_stages - 1  # the largest number of newest stages that fits, at least 1
    best = attempt(1)
    if tokens(best[0]) <= budget:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            cand = attempt(mid)
            if tokens(cand[0]) <= budget:
                lo, best = mid, cand
            else:
                hi = mid - 1
        # Whole blocks, counted from the first stage: the cut stays where it is until a block more must go.
        block = drop_block(lo)
        drop = min(n_stages - 1, -(-(n_stages - lo) // block) * block)
        messages, note = best if drop == n_stages - lo else attempt(n_stages - drop)
    else:
        messages, note = best
        note = (note or "") + " (the prompt may still be too long for the context window)"
    return messages, note
