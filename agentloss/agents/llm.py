"""The LossAgent: a language model reads the three-part prompt and answers the next weights.

``LLMAgent.propose`` builds the messages (``agentloss.prompts``), shortening the history when the
backend says its context is too small, asks the backend (grammar-constrained when the backend
supports it), reads the answer with ``parse_proposal``, and on an unreadable answer or one cut at
``max_tokens`` asks again, telling the model exactly what was wrong. A retry sends the first
prompt, the model's last answer and the correction (not every earlier failed round), which keeps
the conversation within a known size. Weights are clipped into the constraints' bounds and move
limits, with the notes kept. It never raises for a backend or answer failure: after the last
failed try, or at the first ``BackendError`` (timeouts and refused connections are retried by the
backend itself, not again here), it returns the current weights with ``fallback`` saying why.

Everything sent and received goes into ``Decision.exchange`` (role/content, with attempt,
timing, finish reason and token counts on answers) and ``Decision.info``; only the backend's
``describe()`` goes into the run's metadata, with anything named like a key or token redacted.

Example:
    >>> from agentloss.backends.base import ChatResult
    >>> class Echo:
    ...     supports_grammar, context_size = False, None
    ...     def chat(self, messages, **kw): return ChatResult("Weights: l1:gan=1:0.02\\nThoughts: more gan", "stop")
    ...     def count_tokens(self, messages): return None
    ...     def describe(self): return {"type": "echo"}
    >>> from agentloss.prompts import sample_context
    >>> d = LLMAgent(Echo(), needs="Lower NIQE.").propose(sample_context())
    >>> d.weights, d.thoughts, d.attempts, d.fallback
    ({'l1': 1.0, 'gan': 0.02}, 'more gan', 1, None)
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from ..backends.base import ChatResult
from ..prompts import PromptTemplates, fit_history, reserve_tokens
from ..proposal import Proposal, ProposalError, format_weights, parse_proposal, proposal_grammar
from .asking import ask, describe_backend, make_backend
from .base import BaseAgent, Decision, DecisionContext


class LLMAgent(BaseAgent):
    """Loss weights from a language model, as in the LossAgent paper.

    ``backend`` is a ``ChatBackend`` object, or a config (dict, YAML path, or ``None`` for the
    default) given to ``agentloss.backends.create_backend`` (imported only then). ``needs`` is the
    user's goal in words. ``templates`` replaces prompt parts (``PromptTemplates`` or a dict of
    system/history/needs -> path or template string); they are checked by rendering a sample
    context at construction, so a bad or unsafe template fails here with ``PromptTemplateError``.
    ``seed + stage`` is passed to the backend so every stage's decision is reproducible.

    Example:
        >>> from agentloss.prompts import PromptTemplateError
        >>> try:
        ...     LLMAgent(backend=None, templates={"system": "{{ ''.__class__.__mro__ }}"})
        ... except PromptTemplateError as e:
        ...     print("unsafe" in str(e))
        True
    """

    name = "llm"
    thread_safe = True  # one request at a time; the backend is used only from the thread that asks

    def __init__(
        self,
        backend: Any = None,
        needs: str | None = None,
        templates: PromptTemplates | Mapping[str, Any] | None = None,
        max_tries: int = 3,
        use_grammar: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 200,
        seed: int | None = 0,
        history_window: int | None = None,
        loss_descriptions: Mapping[str, str] | None = None,
    ):
        if int(max_tries) < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if history_window is not None and int(history_window) < 1:
            raise ValueError(f"history_window must be >= 1 or None, got {history_window}")
        self.templates = PromptTemplates.coerce(templates)
        self.templates.check()
        self.needs = needs
        self.max_tries = int(max_tries)
        self.use_grammar = bool(use_grammar)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.history_window = history_window
        self.loss_descriptions = dict(loss_descriptions or {})
        self.backend = make_backend(backend)
        self.calls = 0  # backend calls made
        self.decisions = 0  # propose() calls
        self.fallbacks = 0
        self.retries = 0

    # -----------------------------------------------------------------------------------------

    def propose(self, context: DecisionContext) -> Decision:
        ctx = context
        self.decisions += 1
        started = time.perf_counter()
        info: dict[str, Any] = {"attempts": 0, "parse_errors": [], "grammar": False, "history_note": None,
                                "calls": [], "seed": self._stage_seed(ctx)}

        def fallback(reason: str, attempts: int, exchange: list[dict[str, Any]]) -> Decision:
            self.fallbacks += 1
            info["attempts"] = attempts
            info["seconds"] = round(time.perf_counter() - started, 4)
            return Decision(weights=dict(ctx.current_weights), thoughts=None, exchange=exchange,
                            attempts=attempts, fallback=reason, info=info)

        try:
            messages, note = fit_history(
                ctx, self.templates, needs_text=self.needs, backend=self.backend,
                reserve=reserve_tokens(self.max_tokens, self.max_tries), history_window=self.history_window,
                loss_descriptions=self.loss_descriptions,
            )
        except Exception as exc:  # noqa: BLE001 - a template or data problem must not stop training
            return fallback(f"the prompt could not be built: {type(exc).__name__}: {exc}", 0, [])
        info["history_note"] = note

        grammar = None
        if self.use_grammar and getattr(self.backend, "supports_grammar", False):
            grammar = proposal_grammar(ctx.loss_names, max_int_digits=self._int_digits(ctx),
                                       max_thought_chars=self._thought_chars(ctx))
        info["grammar"] = grammar is not None

        def read(result: ChatResult) -> Proposal:
            if result.finish_reason == "length":
                raise ValueError(f"your answer was cut off at the limit of {self.max_tokens} tokens before it ended; "
                                 "answer with just the two lines and keep Thoughts to one short sentence")
            try:
                return parse_proposal(result.text if isinstance(result.text, str) else str(result.text), ctx.loss_names)
            except ProposalError as exc:
                raise ValueError(str(exc)) from exc

        out = ask(self.backend, messages, read, correction=lambda problem: self._correction(problem, ctx),
                  max_tries=self.max_tries, max_tokens=self.max_tokens, temperature=self.temperature,
                  seed=info["seed"], grammar=grammar)
        self.calls += len(out.calls) + (1 if out.failure and out.failure.startswith(("backend", "context")) else 0)
        self.retries += max(0, out.attempts - 1)
        info["calls"] = out.calls
        info["parse_errors"] = list(out.problems)
        if out.value is None:
            return fallback(out.failure or "no answer", out.attempts, out.exchange)
        info["attempts"] = out.attempts
        info["format"] = out.value.format
        info["seconds"] = round(time.perf_counter() - started, 4)
        return Decision(weights=dict(out.value.weights), thoughts=out.value.thoughts, exchange=out.exchange,
                        attempts=out.attempts, info=info)

    # -----------------------------------------------------------------------------------------

    def _stage_seed(self, ctx: DecisionContext) -> int | None:
        return None if self.seed is None else int(self.seed) + int(ctx.stage)

    @staticmethod
    def _int_digits(ctx: DecisionContext) -> int:
        hi = max((ctx.constraints.bounds(n)[1] for n in ctx.loss_names), default=100.0)
        return max(1, min(6, len(str(math.floor(hi)))))

    def _thought_chars(self, ctx: DecisionContext) -> int:
        # Thoughts are ASCII in the grammar, so a token is at least a character: keeping the whole
        # answer (plus the end token) within max_tokens characters means it is never cut.
        n = len(ctx.loss_names)
        fixed = len("Weights: ") + len(":".join(ctx.loss_names)) + 1 + n * (self._int_digits(ctx) + 7) \
            + len("\nThoughts: ") + 1 + 2
        return max(16, min(240, self.max_tokens - fixed))

    def _correction(self, problem: str, ctx: DecisionContext) -> str:
        names = list(ctx.loss_names)
        text = (
            f"Your answer could not be used: {problem.rstrip('.')}.\n"
            "Answer again with exactly these two lines and nothing else:\n"
            "Weights: " + ":".join(names) + "=" + ":".join(f"<{n} weight>" for n in names) + "\n"
            "Thoughts: <one short sentence>"
        )
        if all(n in ctx.current_weights for n in names):
            text += f"\n(The current weights are {format_weights(ctx.current_weights, names)}.)"
        return text

    # -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Counters only: decisions are seeded per stage (``seed + stage``), so nothing else is needed."""
        return {"seed": self.seed, "calls": self.calls, "decisions": self.decisions,
                "fallbacks": self.fallbacks, "retries": self.retries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state.get("seed", self.seed)
        self.calls = int(state.get("calls", 0))
        self.decisions = int(state.get("decisions", 0))
        self.fallbacks = int(state.get("fallbacks", 0))
        self.retries = int(state.get("retries", 0))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "backend": describe_backend(self.backend),
            "templates": self.templates.describe(),
            "needs": self.needs,
            "max_tries": self.max_tries,
            "use_grammar": self.use_grammar,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "history_window": self.history_window,
            "loss_descriptions": dict(self.loss_descriptions),
        }
