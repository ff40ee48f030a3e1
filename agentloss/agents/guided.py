"""``GuidedAgent``: numbers propose, the language model chooses and explains, a guard keeps fidelity.

The paper's agent asks the model to infer from raw history how each weight moves each objective;
small local models cannot (they restate the weights, copy the format example, or jump to
extremes). This agent splits the work in two:

* **the numeric proposer** (:class:`~agentloss.agents.proposer.GuidedProposer`): measured effects,
  ranked moves (keep, or one weight one step up or down), a fidelity guard that vetoes moves
  predicted to break it, and optional snapshot trials;
* **an optional language-model chooser** (this module): the model reads the user's needs, the
  facts, the guard's state and the ranked options (labelled A, B, C ...) through the guided
  templates (``agentloss.prompts.guided``, overridable), answers ``Choice: <letter>`` and
  ``Thoughts: <why>`` (grammar-constrained where the backend allows), and that option is proposed.
  An unreadable answer, after ``max_tries``, falls back to the top-ranked option (recorded). With
  ``backend: none`` the top-ranked option is taken and explained by a template sentence.

Use it when a small or local model drives the run, or when the objectives must not trade away
fidelity: it needs no numeric reasoning from the model. Overhead: the arithmetic is < 1 ms; the
LLM call is one short prompt (~400 tokens) per stage.

Example (numbers only, no model):
    >>> from agentloss.prompts import sample_context
    >>> agent = GuidedAgent(backend="none", primary="niqe", guards={"psnr": 0.2})
    >>> d = agent.propose(sample_context())
    >>> sorted(d.weights) == sorted(sample_context().current_weights), d.info["chosen"]["label"]
    (True, 'A')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from ..backends.base import ChatResult
from ..prompts.guided import GuidedTemplates, guided_messages
from .asking import ask, describe_backend, make_backend
from .base import BaseAgent, Decision, DecisionContext
from .proposer import Candidate, GuidedProposer, Options

__all__ = ["CHOOSER_OPTIONS", "GuidedAgent"]

_CHOICE = re.compile(r"choice\s*[:=]\s*\(?\s*([A-Z])\b", re.IGNORECASE)
_THOUGHTS = re.compile(r"thoughts?\s*[:=]\s*(.+)", re.IGNORECASE | re.DOTALL)
# The chooser's settings and their defaults; every other option is the proposer's (GuidedProposer's fields).
CHOOSER_OPTIONS: dict[str, Any] = {"max_tries": 2, "max_tokens": 120, "temperature": 0.0, "seed": 0,
                                   "use_grammar": True}


class GuidedAgent(BaseAgent):
    """See the module docstring.

    Args:
        backend: an LLM backend config (as for ``LLMAgent``; ``None`` = the embedded default model),
            a backend object, or ``"none"`` for numbers only.
        needs: the user's goal in words, shown to the model.
        templates: replacements for the guided prompt's parts (``system``, ``user``): paths or strings.
        **options: the proposer's settings (``primary``, ``guards``, ``tune``, ``step``, ``noise``,
            ``prior``, ``goal_prior``, ``explore``, ``max_candidates``, ``roles``, ``trials``,
            ``trial_steps``, ``noise_trials``, ``min_gain``: see :class:`~agentloss.agents.proposer.GuidedProposer`) and the
            chooser's (``max_tries``, ``max_tokens``, ``temperature``, ``seed``, ``use_grammar``).
            An unknown name raises ``ValueError`` listing the allowed ones.
    """

    name = "guided"
    thread_safe = True  # without trials; with trials the scheduler asks it synchronously

    def __init__(self, backend: Any = None, needs: str | None = None,
                 templates: GuidedTemplates | Mapping[str, Any] | None = None, **options: Any):
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for agent type 'guided'; allowed: {self.option_names()}")
        proposer_fields = {f.name for f in fields(GuidedProposer)}
        self.proposer = GuidedProposer(**{k: v for k, v in options.items() if k in proposer_fields})
        chooser = {**CHOOSER_OPTIONS, **{k: v for k, v in options.items() if k in CHOOSER_OPTIONS}}
        self.max_tries = int(chooser["max_tries"])
        self.max_tokens = int(chooser["max_tokens"])
        self.temperature = float(chooser["temperature"])
        self.seed = chooser["seed"]
        self.use_grammar = bool(chooser["use_grammar"])
        self.needs = needs
        self.templates = GuidedTemplates.coerce(templates)
        self.templates.check()
        self.backend = make_backend(backend, optional=True)
        self.decisions = 0
        self.llm_fallbacks = 0

    @classmethod
    def option_names(cls) -> list[str]:
        """Every keyword ``GuidedAgent`` takes (the agent factory checks configs against it)."""
        return ["backend", "needs", "templates", *(f.name for f in fields(GuidedProposer)), *CHOOSER_OPTIONS]

    @property
    def trials(self) -> int:
        return self.proposer.trials

    @property
    def trial_steps(self) -> int | None:
        return self.proposer.trial_steps

    def candidates(self, ctx: DecisionContext) -> tuple[list[Candidate], dict[str, Any]]:
        """All proposals, ranked best first (vetoed ones last), and the facts behind them."""
        return self.proposer.candidates(ctx)

    def messages(self, ctx: DecisionContext, options: Options | None = None) -> list[dict[str, str]]:
        """The messages the model gets for this decision (without trials when ``options`` is not given)."""
        opts = options if options is not None else self.proposer.options(ctx)
        return guided_messages(ctx, opts.shown, opts.facts, self.needs, self.templates)

    # -- the choice ------------------------------------------------------------------------------
    def _grammar(self, labels: list[str]) -> str:
        letters = " | ".join(f'"{x}"' for x in labels)
        return f'root ::= "Choice: " ({letters}) "\\nThoughts: " [^\\n]+'

    def _ask(self, messages: list[dict[str, str]], labels: list[str]) -> tuple[str | None, str | None, list, int, str | None]:
        grammar = self._grammar(labels) if self.use_grammar and getattr(self.backend, "supports_grammar", False) else None

        def read(result: ChatResult) -> tuple[str, str | None]:
            text = result.text or ""
            m = _CHOICE.search(text)
            if m and m.group(1).upper() in labels:
                t = _THOUGHTS.search(text)
                return m.group(1).upper(), (t.group(1).strip() if t else None)
            raise ValueError(f"the answer must start with 'Choice: ' and one of {', '.join(labels)}"
                             if not m else f"{m.group(1)} is not one of the options {', '.join(labels)}")

        out = ask(self.backend, messages, read, max_tries=self.max_tries, max_tokens=self.max_tokens,
                  temperature=self.temperature, seed=self.seed, grammar=grammar,
                  correction=lambda problem: (f"Your answer could not be used: {problem}. Answer again in exactly "
                                              "this format:\nChoice: <letter>\nThoughts: <one sentence>"))
        if out.value is None:
            return None, None, out.exchange, out.attempts, out.failure
        return out.value[0], out.value[1], out.exchange, out.attempts, None

    def propose(self, context: DecisionContext) -> Decision:
        self.decisions += 1
        opts = self.proposer.options(context)
        shown = opts.shown
        chosen, thoughts, exchange, attempts, fallback = shown[0], None, [], 0, None
        if self.backend is not None and len(shown) > 1:  # one option (keep) needs no choice
            label, thoughts, exchange, attempts, problem = self._ask(self.messages(context, opts),
                                                                     [c.label for c in shown])
            if label is None:
                self.llm_fallbacks += 1
                fallback = f"model answer unusable ({problem}); took the top-ranked proposal"
            else:
                chosen = next(c for c in shown if c.label == label)
        if thoughts is None:
            thoughts = self.proposer.explain(chosen, opts.facts)
        info = {"chosen": asdict(chosen), "shown": [asdict(c) for c in shown], "trials": opts.trials,
                "vetoed": [{"action": c.action, "why": c.vetoed} for c in opts.ranked if c.vetoed],
                "facts": opts.facts, "llm_fallback": fallback}
        return Decision(weights=chosen.weights, thoughts=thoughts, exchange=exchange, attempts=max(1, attempts),
                        info=info, action=chosen.action)

    def check(self, loss_names: list[str], objective_names: list[str]) -> None:
        p = self.proposer
        if not objective_names:
            raise ValueError("the guided agent ranks moves by measured scores, and this run has only text feedback: "
                             "add a numeric objective, or use the paper's agent (type: llm), which reads text")
        missing = [f"objective {n!r}" for n in [p.primary, *(p.guards or {})] if n and n not in objective_names]
        missing += [f"loss {n!r}" for n in [*(p.tune or []), *(p.roles or {})] if n not in loss_names]
        if missing:
            raise ValueError(f"the guided agent names {', '.join(missing)}, which this run does not have "
                             f"(objectives: {objective_names}; losses: {loss_names})")

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"decisions": self.decisions, "llm_fallbacks": self.llm_fallbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decisions = int(state.get("decisions", 0))
        self.llm_fallbacks = int(state.get("llm_fallbacks", 0))

    def describe(self) -> dict[str, Any]:
        p = self.proposer
        return {**super().describe(), "primary": p.primary, "guards": p.guards, "tune": p.tune, "step": p.step,
                "prior": p.prior, "explore": p.explore, "trials": p.trials, "trial_steps": p.trial_steps,
                "noise_trials": p.noise_trials, "min_gain": p.min_gain,
                "templates": self.templates.describe(), "backend": describe_backend(self.backend)}
