"""Agents that choose the loss weights of the next stage."""

from .base import Agent, BaseAgent, Decision, DecisionContext, ObjectiveInfo
from .baselines import FixedAgent, RandomAgent
from .factory import AGENT_REGISTRY, create_agent
from .guided import GuidedAgent
from .llm import LLMAgent

__all__ = ["AGENT_REGISTRY", "Agent", "BaseAgent", "Decision", "DecisionContext", "FixedAgent", "GuidedAgent", "LLMAgent",
           "ObjectiveInfo", "RandomAgent", "create_agent"]
