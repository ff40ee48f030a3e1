"""The agent protocol: the history and the loss names in, proposed weights out.

An agent gets a ``DecisionContext`` (everything known at a stage end, as plain data) and returns a
``Decision``. It never touches the model or the loss: the scheduler validates, clips and applies
what it proposes, and records it. An agent that raises, or proposes weights that do not validate,
makes the scheduler keep the previous weights and record why, so an agent cannot crash training.

Agents keep any state they need (an RNG, a conversation) in ``state_dict()`` so that a resumed
run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..constraints import WeightConstraints
from ..records import StageRecord


@dataclass(frozen=True)
class ObjectiveInfo:
    """What an agent may know of an objective: its name, direction and meaning."""

    name: str
    higher_is_better: bool
    description: str = ""
    value_range: tuple[float | None, float | None] | None = None
    needs_reference: bool = False


@dataclass
class DecisionContext:
    """Everything an agent may use to choose the next stage's weights."""

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
    # Set when the scheduler has SnapshotTrials: trial(list of weightings, steps) -> probe scores of
    # each after ``steps`` iterations from the current state (training is restored afterwards).
    trial: Callable[[list[dict[str, float]], int | None], list[dict[str, float | None]]] | None = None


@dataclass
class Decision:
    """An agent's answer. ``exchange`` keeps the raw messages, if any, for the record."""

    weights: dict[str, float]
    thoughts: str | None = None
    exchange: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    fallback: str | None = None  # set by an agent that itself fell back to the previous weights
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "thoughts": self.thoughts,
            "exchange": list(self.exchange),
            "attempts": self.attempts,
            "fallback": self.fallback,
            "info": dict(self.info),
        }


@runtime_checkable
class Agent(Protocol):
    """Anything with ``propose``; ``state_dict``/``load_state_dict``/``describe`` are optional."""

    def propose(self, context: DecisionContext) -> Decision: ...


class BaseAgent:
    """Convenience base: a name, empty state and a description for the run's metadata."""

    name: str = "agent"

    def propose(self, context: DecisionContext) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__}


def agent_state(agent: Agent) -> dict[str, Any]:
    fn = getattr(agent, "state_dict", None)
    return fn() if callable(fn) else {}


def load_agent_state(agent: Agent, state: dict[str, Any]) -> None:
    fn = getattr(agent, "load_state_dict", None)
    if callable(fn):
        fn(state)


def describe_agent(agent: Agent) -> dict[str, Any]:
    fn = getattr(agent, "describe", None)
    return fn() if callable(fn) else {"name": type(agent).__name__, "class": type(agent).__name__}
