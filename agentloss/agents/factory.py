"""One factory for agents, so a config file (or a dict) picks the agent and its settings.

Example:
    >>> create_agent({"type": "random", "seed": 3, "max_factor": 2.0}).describe()["seed"]
    3
    >>> create_agent({"type": "fixed"}).name
    'fixed'
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from .base import Agent
from .baselines import FixedAgent, RandomAgent
from .guided import GuidedAgent
from .llm import LLMAgent  # light: the backend runtimes are imported only when a backend is built

AGENT_REGISTRY: dict[str, Callable[..., Agent]] = {"fixed": FixedAgent, "random": RandomAgent, "llm": LLMAgent,
                                                   "guided": GuidedAgent}


def create_agent(config: Mapping[str, Any] | str | None) -> Agent:
    """Build an agent from ``{"type": "fixed" | "random" | "llm" | "guided", **options}`` (or just its type name).

    Unknown types and unknown options raise ``ValueError`` naming what is allowed.
    """
    if config is None:
        config = {"type": "fixed"}
    if isinstance(config, str):
        config = {"type": config}
    cfg = dict(config)
    kind = cfg.pop("type", None)
    if kind not in AGENT_REGISTRY:
        raise ValueError(f"agent.type must be one of {sorted(AGENT_REGISTRY)}, got {kind!r}")
    factory = AGENT_REGISTRY[kind]
    allowed = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = [k for k in cfg if k not in allowed]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for agent type {kind!r}; allowed: {allowed}")
    return factory(**cfg)
