"""The agent protocol: the history and the loss names in, proposed weights out.

An agent gets a ``DecisionContext`` (everything known at a stage end, as plain data; the types live
in ``agentloss.types``) and returns a ``Decision`` with the weights it proposes. It never touches
the model or the loss and never clips: the scheduler validates, constrains and applies what it
proposes, and records it. An agent that raises, or proposes weights that do not validate,
makes the scheduler keep the previous weights and record why, so an agent cannot crash training.

Agents keep any state they need (an RNG, a conversation) in ``state_dict()`` so that a resumed
run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..types import Decision, DecisionContext, ObjectiveInfo

__all__ = ["Agent", "BaseAgent", "Decision", "DecisionContext", "ObjectiveInfo", "agent_state", "check_agent", "describe_agent",
           "load_agent_state"]


@runtime_checkable
class Agent(Protocol):
    """Anything with ``propose``; ``state_dict``/``load_state_dict``/``describe`` are optional."""

    def propose(self, context: DecisionContext) -> Decision: ...


class BaseAgent:
    """Convenience base: a name, empty state and a description for the run's metadata."""

    name: str = "agent"
    # True when propose() may run in a background thread while training goes on
    # (StageScheduler(asynchronous=True)): it reads only its context and its own state.
    thread_safe: bool = False

    def propose(self, context: DecisionContext) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__}

    def check(self, loss_names: list[str], objective_names: list[str]) -> None:
        """Raise ``ValueError`` if this agent names losses or objectives the run lacks (it would fail
        at every stage end); the scheduler calls it at construction."""


def agent_state(agent: Agent) -> dict[str, Any]:
    fn = getattr(agent, "state_dict", None)
    return fn() if callable(fn) else {}


def load_agent_state(agent: Agent, state: dict[str, Any]) -> None:
    fn = getattr(agent, "load_state_dict", None)
    if callable(fn):
        fn(state)


def check_agent(agent: Agent, loss_names: list[str], objective_names: list[str]) -> None:
    fn = getattr(agent, "check", None)
    if callable(fn):
        fn(loss_names, objective_names)


def describe_agent(agent: Agent) -> dict[str, Any]:
    fn = getattr(agent, "describe", None)
    return fn() if callable(fn) else {"name": type(agent).__name__, "class": type(agent).__name__}
