"""Asking the agent: in the caller's thread, or in a background worker while training goes on.

``ask_agent`` turns anything an agent does (an answer, an exception, a wrong return type) into an
``AgentOutcome``, so the scheduler has one path for every result. ``BackgroundRequest`` runs it in
a daemon thread: a backend that hangs can be abandoned, and never keeps the process from exiting
at the end of training. The worker only reads its own copy of the decision context; the training
thread applies the answer (validated and constrained) when it takes it.

Example:
    >>> from agentloss.agents.baselines import FixedAgent
    >>> from agentloss.constraints import WeightConstraints
    >>> from agentloss.types import DecisionContext
    >>> ctx = DecisionContext(["l1"], {"l1": 1.0}, {"l1": 1.0}, [], [], WeightConstraints(), 1)
    >>> request = BackgroundRequest(FixedAgent(), ctx)
    >>> request.wait(5.0), request.outcome.decision.weights, request.outcome.error
    (True, {'l1': 1.0}, None)
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass

from .agents.base import Agent
from .types import Decision, DecisionContext

__all__ = ["AgentOutcome", "BackgroundRequest", "ask_agent", "is_thread_safe"]


@dataclass
class AgentOutcome:
    """What one ``propose`` call gave: a ``Decision``, or the error that stands in for it."""

    decision: Decision | None = None
    error: str | None = None
    traceback: str | None = None
    seconds: float = 0.0


def ask_agent(agent: Agent, context: DecisionContext) -> AgentOutcome:
    """``agent.propose(context)``; an exception or a wrong return type becomes ``error`` (never raised)."""
    t = time.perf_counter()
    try:
        decision = agent.propose(context)
        if not isinstance(decision, Decision):
            raise TypeError(f"propose() must return a Decision, got {type(decision).__name__}")
    except Exception as e:  # noqa: BLE001 - an agent can never stop training
        return AgentOutcome(error=f"agent raised {type(e).__name__}: {e}", traceback=traceback.format_exc(limit=5),
                            seconds=time.perf_counter() - t)
    return AgentOutcome(decision=decision, seconds=time.perf_counter() - t)


def is_thread_safe(agent: Agent) -> bool:
    """Whether ``agent`` says its ``propose`` may run beside training (``thread_safe = True``)."""
    return getattr(agent, "thread_safe", False) is True


class BackgroundRequest:
    """One ``ask_agent`` call in a daemon thread; ``wait`` for it, or drop it (it then runs out unheard)."""

    def __init__(self, agent: Agent, context: DecisionContext):
        self.started = time.perf_counter()
        self.outcome: AgentOutcome | None = None
        self._done = threading.Event()
        # Daemon: a hung backend must not keep the process alive after training has ended.
        self._thread = threading.Thread(target=self._run, args=(agent, context), name="agentloss-decision",
                                        daemon=True)
        self._thread.start()

    def _run(self, agent: Agent, context: DecisionContext) -> None:
        try:
            self.outcome = ask_agent(agent, context)
        except BaseException as e:  # noqa: BLE001 - SystemExit from a backend: still an outcome, never lost
            self.outcome = AgentOutcome(error=f"agent worker stopped: {type(e).__name__}: {e}",
                                        seconds=time.perf_counter() - self.started)
        finally:
            self._done.set()

    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: for ever); ``True`` if the answer is there."""
        return self._done.wait(None if timeout is None else max(0.0, timeout))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
