"""The contracts every part of agentloss exchanges, as plain typed data (no behaviour, no torch).

Data flows one way — training loop → loss → scheduler → objectives → agent → backend — and these
types are what crosses each boundary: an objective describes itself with ``ObjectiveInfo``; the
scheduler hands an agent a ``DecisionContext`` and gets back a ``Decision`` (a raw proposal with
its reasons); the scheduler constrains it and writes what happened as a ``DecisionRecord`` inside a
``StageRecord``. This module imports nothing from the package except ``constraints`` (itself a
leaf), so any module may import it without a cycle.

Records written by earlier versions (a free-form ``decision`` dict) are read into the same types.

Example:
    >>> rec = StageRecord.from_dict({"stage": 1, "iteration": 10, "weights": {"l1": 1.0},
    ...     "decision": {"weights": {"l1": 2.0}, "thoughts": "more", "clipped": ["l1: 2 clipped to 1.5"]}})
    >>> rec.decision.proposed, rec.decision.clipped
    ({'l1': 2.0}, ['l1: 2 clipped to 1.5'])
    >>> StageRecord.from_dict(rec.to_dict()) == rec
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, asdict, dataclass, field, fields
from typing import Any

from .constraints import WeightConstraints

__all__ = ["Decision", "DecisionContext", "DecisionRecord", "ObjectiveInfo", "StageRecord", "json_safe"]


def json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; store them as None so every line stays parseable by any reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(obj.tolist())
    return str(obj)


@dataclass(frozen=True)
class ObjectiveInfo:
    """What an agent may know of an objective: its name, direction and meaning."""

    name: str
    higher_is_better: bool
    description: str = ""
    value_range: tuple[float | None, float | None] | None = None
    needs_reference: bool = False
    kind: str = "score"  # "score": a number per stage; "text": a sentence of feedback (no direction)


@dataclass
class Decision:
    """An agent's answer: the weights it proposes (unclipped) and why.

    The scheduler validates and constrains ``weights``; an agent never clips them itself. ``fallback``
    is set by an agent that could not decide (its weights are then ignored and the previous ones
    kept); ``exchange`` keeps the raw messages, ``info`` anything agent-specific for the record, and
    ``action`` a short label of what was chosen (shown by ``agentloss show``).
    """

    weights: dict[str, float]
    thoughts: str | None = None
    exchange: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    fallback: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    action: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "thoughts": self.thoughts, "exchange": list(self.exchange),
                "attempts": self.attempts, "fallback": self.fallback, "info": dict(self.info), "action": self.action}


@dataclass
class DecisionRecord:
    """What happened at one decision, as the scheduler records it.

    ``proposed`` is what the agent answered (before the constraints), ``clipped`` one note per weight
    the constraints changed, ``kept_previous`` whether the previous weights were kept after all
    (the reason is the stage's ``fallback``). ``skipped`` says why no agent was asked (final
    stage), ``traceback`` is set when the agent raised. ``seen_stages``: the stages of the history the
    agent was shown (with asynchronous decisions, what it knew when asked).
    """

    proposed: dict[str, float] | None = None
    thoughts: str | None = None
    action: str | None = None
    exchange: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    agent_fallback: str | None = None
    clipped: list[str] = field(default_factory=list)
    kept_previous: bool = False
    feedback: list[str] = field(default_factory=list)
    skipped: str | None = None
    traceback: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    seen_stages: list[int] = field(default_factory=list)

    @classmethod
    def from_decision(cls, decision: Decision, feedback: list[str] | None = None) -> DecisionRecord:
        return cls(proposed=dict(decision.weights) if isinstance(decision.weights, Mapping) else None,
                   thoughts=decision.thoughts, action=decision.action, exchange=list(decision.exchange or []),
                   attempts=int(decision.attempts), agent_fallback=decision.fallback,
                   feedback=list(feedback or []), info=dict(decision.info or {}))

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecisionRecord:
        """Read a record of this version or of the older free-form dict (``weights``, ``fallback``,
        ``clipped`` at top level or in ``info``, the guided agent's ``info.chosen.action``)."""
        d = dict(data)
        if "proposed" in d or "kept_previous" in d:
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        info = dict(d.get("info") or {})
        chosen = info.get("chosen") if isinstance(info.get("chosen"), Mapping) else {}
        return cls(
            proposed=info.get("proposed") or d.get("weights"),
            thoughts=d.get("thoughts"),
            action=d.get("action") or chosen.get("action"),
            exchange=list(d.get("exchange") or []),
            attempts=int(d.get("attempts") or 0),
            agent_fallback=d.get("fallback"),
            clipped=list(d.get("clipped") or info.get("clipped") or []),
            feedback=list(d.get("feedback") or []),
            skipped=d.get("skipped"),
            traceback=d.get("traceback"),
            info=info,
        )


@dataclass
class StageRecord:
    """What happened at one stage end (stage 0 is the initial state S0, scored before training).

    ``weights`` are the weights the stage was trained with (for S0: the initial weights);
    ``next_weights`` are those decided for the following stage. ``scores`` holds the mean of each
    objective (``None`` when it failed), ``per_image`` the per-image scores. ``decision`` is what the
    agent proposed and what the constraints made of it (``None`` when no agent was asked), and
    ``fallback`` the reason the previous weights were kept, if they were. ``warnings`` are things
    that did not stop the decision but make it doubtful (trials whose candidates all scored the same).
    """

    stage: int
    iteration: int
    weights: dict[str, float]
    scores: dict[str, float | None] = field(default_factory=dict)
    _: KW_ONLY  # the rest by name: fields are added over time, and a positional call would shift silently
    per_image: dict[str, list[float | None]] = field(default_factory=dict)
    texts: dict[str, str | None] = field(default_factory=dict)  # text feedback per source (None: it failed)
    next_weights: dict[str, float] | None = None
    decision: DecisionRecord | None = None
    fallback: str | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Asynchronous decisions: the optimizer step at which next_weights took effect (``iteration`` is
    # when they were asked for). ``None``: at ``iteration``, as in synchronous mode.
    applied_iteration: int | None = None

    def __post_init__(self) -> None:
        # Plain dicts only: a record must never alias (or be) a live, mutable view of the loss's weights.
        self.weights = dict(self.weights)
        if self.next_weights is not None:
            self.next_weights = dict(self.next_weights)
        if isinstance(self.decision, Mapping):
            self.decision = DecisionRecord.from_dict(self.decision) if self.decision else None

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class DecisionContext:
    """Everything an agent may use to choose the next stage's weights (its own copy: edits are ignored)."""

    loss_names: list[str]
    current_weights: dict[str, float]
    initial_weights: dict[str, float]
    history: list[StageRecord]
    objectives: list[ObjectiveInfo]
    constraints: WeightConstraints
    stage: int  # the stage that just ended (1-based; 0 would be S0)
    total_stages: int | None = None
    stage_length: int | None = None
    feedback: list[str] = field(default_factory=list)  # people's notes, newest last
    # Sources of text feedback (kind "text"); what they said at each stage is in history[i].texts.
    text_sources: list[ObjectiveInfo] = field(default_factory=list)
    # Set when the scheduler has SnapshotTrials: trial(list of weightings, steps) -> probe scores of
    # each after ``steps`` iterations from the current state (training is restored afterwards).
    trial: Callable[[list[dict[str, float]], int | None], list[dict[str, float | None]]] | None = None
