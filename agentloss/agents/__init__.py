"""Agents that choose the loss weights of the next stage."""

from .base import Agent, BaseAgent, Decision, DecisionContext, ObjectiveInfo
from .baselines import FixedAgent, RandomAgent
from .factory import AGENT_REGISTRY, create_agent
from .guided import GuidedAgent
from .llm import LLMAgent
from .population import PopulationAgent

__all__ = ["AGENT_REGISTRY", "Agent", "BaseAgent", "Decision", "DecisionContext", "FixedAgent", "GuidedAgent", "LLMAgent",
           "ObjectiveInfo", "PopulationAgent", "RandomAgent", "create_agent"]
