"""Bundled tasks: run configs, their builders, the comparison harness (``harness``) and its reports."""

from .config import TASK_DEFAULTS, ConfigError, RunConfig, load_config

__all__ = ["TASK_DEFAULTS", "ConfigError", "RunConfig", "load_config"]
