"""One factory for agents, so a config file (or a dict) picks the agent and its settings.

Example:
    >>> create_agent({"type": "random", "seed": 3, "max_factor": 2.0}).describe()["seed"]
    3
    >>> create_agent({"type": "fixed"}).name
    'fixed'
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..prompts import replay
from ..records import read_meta, read_records
from .base import Agent
from .baselines import FixedAgent, RandomAgent
from .guided import GuidedAgent
from .llm import LLMAgent  # light: the backend runtimes are imported only when a backend is built
from .population import PopulationAgent

AGENT_REGISTRY: dict[str, Callable[..., Agent]] = {"fixed": FixedAgent, "random": RandomAgent, "llm": LLMAgent,
                                                   "guided": GuidedAgent, "population": PopulationAgent}


def agent_options(kind: str) -> list[str]:
    """The options an agent type takes (its ``option_names()``, else its constructor's parameters).

    Example:
        >>> agent_options("random")
        ['seed', 'max_factor']
    """
    if kind not in AGENT_REGISTRY:
        raise ValueError(f"unknown agent type {kind!r}; registered: {sorted(AGENT_REGISTRY)}")
    factory = AGENT_REGISTRY[kind]
    names = getattr(factory, "option_names", None)
    return list(names()) if callable(names) else [p for p in inspect.signature(factory).parameters if p != "self"]


def create_agent(config: Mapping[str, Any] | str | None) -> Agent:
    """Build an agent from ``{"type": "fixed" | "random" | "llm" | "guided" | "population", **options}`` (or its type name).

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
    allowed = agent_options(kind)
    unknown = [k for k in cfg if k not in allowed]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for agent type {kind!r}; allowed: {allowed}")
    return factory(**cfg)


def dry_run_messages(config: Mapping[str, Any] | None, run_dir: str | os.PathLike[str], *,
                     feedback: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The messages the agent a config names would send for a recorded run's next decision; no model is loaded.

    ``type: llm`` (the default) gives the paper's prompt, ``type: guided`` the guided agent's (its
    options as ranked without snapshot trials: a dry run trains nothing). Agents that ask no model
    (``fixed``, ``random``) have no prompt: ``ValueError``.

    Example:
        >>> import tempfile
        >>> from agentloss.records import RecordWriter
        >>> from agentloss.types import StageRecord
        >>> d = tempfile.mkdtemp(); w = RecordWriter(d)
        >>> w.write_meta({"loss_names": ["l1", "gan"], "objectives": [{"name": "niqe", "higher_is_better": False}]})
        >>> for k, s in enumerate([6.0, 5.8]):
        ...     w.append(StageRecord(k, 10 * k, {"l1": 1.0, "gan": 0.01}, {"niqe": s}))
        >>> msgs = dry_run_messages({"type": "guided", "needs": "Lower NIQE."}, d)
        >>> "Goal: Lower NIQE." in msgs[1]["content"], "Choice: <letter>" in msgs[1]["content"]
        (True, True)
    """
    cfg = dict(config or {})
    kind = cfg.pop("type", "llm")
    if kind == "llm":
        return replay.dry_run_messages(cfg, run_dir, feedback=feedback)
    if kind == "guided":
        records, meta = read_records(run_dir), read_meta(run_dir)
        ctx = replay.context_from_run(records, meta, feedback=feedback)
        cfg["backend"] = "none"  # only the prompt is wanted
        cfg.pop("trials", None)  # trials need the model being trained
        agent = create_agent({"type": "guided", **cfg})
        assert isinstance(agent, GuidedAgent)
        return agent.messages(ctx)
    raise ValueError(f"agent type {kind!r} asks no language model, so it has no prompt (llm and guided do)")
