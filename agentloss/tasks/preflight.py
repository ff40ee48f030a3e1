"""Check every part of a comparison before anything trains: a part that cannot work fails now, with its fix.

Found after Fixed and Random have trained (hours), a missing GGUF costs the whole comparison; found at
every stage end, a NIQE without its parameter file silently turns the agent into Fixed. So
:func:`check_setup` builds, tries and discards what the runs will use: the network (one forward of a
probe crop), the loss (its terms load their weights), the objectives and the final scoring's metrics
(built, so a missing parameter file or download fails here), and per method the agent, fitted into a scheduler
as training will (loss and objective names, probe references) with its language model checked by
:func:`check_backend` (the runtime is installed; an endpoint answers within a few seconds). The
random number generators are left as they were: the runs draw exactly what they would without it.
"""

from __future__ import annotations

import importlib.util
import os
import random
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..agents import create_agent
from ..backends.base import BackendError
from ..objectives import ObjectiveError
from ..scheduler import StageScheduler
from ..trials import trials_for
from .config import ConfigError

# ``setup`` below is a harness ``Setup`` (not imported: the harness imports this module).
Setup = Any

__all__ = ["build_agent", "check_backend", "check_setup"]

PING_TIMEOUT_S = 10.0  # an endpoint that has not answered by then will not serve a run


def build_agent(setup: Setup, method: str, seed: int) -> Any:
    """The agent of ``method`` at ``seed``; a config it cannot be built from is a ``ConfigError`` naming it."""
    cfg = setup.agent_config(method, seed)
    try:
        return create_agent(cfg)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # weights: [1, 2] fails on .items()
        raise ConfigError(f"invalid run config:\n  agent ({method}): {type(e).__name__}: {e}"
                          if isinstance(e, (AttributeError, KeyError)) else
                          f"invalid run config:\n  agent ({method}): {e}") from None


def check_backend(backend: Any, timeout: float = PING_TIMEOUT_S) -> None:
    """Raise ``BackendError`` (saying what to do) when ``backend`` cannot answer; loads no model."""
    from ..backends import LlamaCppBackend, OpenAIBackend, TransformersBackend

    if isinstance(backend, LlamaCppBackend) and importlib.util.find_spec("llama_cpp") is None:
        raise BackendError("the llama_cpp backend needs llama-cpp-python: pip install 'llama-cpp-python>=0.3'")
    if isinstance(backend, TransformersBackend) and importlib.util.find_spec("transformers") is None:
        raise BackendError("the transformers backend needs transformers: pip install transformers")
    if not isinstance(backend, OpenAIBackend):
        return
    info = backend.describe()  # base_url without user:password@, and where the key comes from
    url = info["base_url"] or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if info["api_key_source"] == "none" and info["base_url"] is None:
        raise BackendError(f"openai backend at {url}: no API key; set the environment variable {info['api_key_env']}")
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered (401 without a key, 404 where /models is not served): it is there
    except (OSError, ValueError) as e:  # refused, unknown host, timeout, a malformed URL
        reason = getattr(e, "reason", None) or e
        raise BackendError(f"openai backend: {url} does not answer ({reason}); start the server or fix the URL "
                           f"(--openai-url, agent.backend.base_url)") from None


def _forward(setup: Setup, model: torch.nn.Module) -> None:
    x = setup.probe_lq[0][None, :, :48, :48].float()  # a crop: the point is that it runs, not the cost
    with torch.no_grad():
        (setup.restore or (lambda m, lq: m(lq)))(model.eval(), x)


def _eval_metrics(setup: Setup, model: torch.nn.Module) -> None:
    """Build the final scoring's metrics: one that cannot be built would fail after every run has trained."""
    if not setup.eval.sets:
        return
    from ..datasets import evaluate

    try:
        evaluate(model, [], setup.scale, metrics=setup.eval.metrics, metric_kwargs=setup.eval.metric_kwargs,
                 device="cpu", **setup.eval.sets[0].kwargs)  # no pairs: only the metrics are built
    except (RuntimeError, ValueError) as e:
        hint = " (a run config gives NIQE's file as niqe_params:)" if "niqe" in str(e).lower() else ""
        raise ConfigError(f"invalid run config:\n  eval.metrics: {e}{hint}") from None


def _check(setup: Setup, methods: Sequence[str], seed: int) -> None:
    agents = {m: build_agent(setup, m, seed) for m in methods}  # the cheapest checks first
    try:
        for agent in agents.values():
            check_backend(getattr(agent, "backend", None))
        next(setup.stream(seed))  # the data loads (the builders raise ConfigError naming the source)
        try:
            model = setup.model()
            _forward(setup, model)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the network raises, its settings are the cause
            raise ConfigError(f"invalid run config:\n  backbone: the network fails on a probe crop: "
                              f"{type(e).__name__}: {e}") from None
        loss_fn = setup.loss()
        objectives = setup.objectives(torch.device("cpu"))
        for obj in objectives:
            try:
                if callable(getattr(obj, "prepare", None)):
                    obj.prepare()
            except ObjectiveError as e:
                raise ConfigError(f"invalid run config:\n  objectives: {e}") from None
        _eval_metrics(setup, model)
        refs = setup.probe_references if any(o.needs_reference for o in objectives) else None
        for method, agent in agents.items():
            try:  # what the scheduler refuses: duplicate objective names, an agent naming what the run lacks
                # The trials the harness would give it (their batches are never drawn here).
                trials = trials_for(setup.agent_config(method, seed), torch.optim.Adam(model.parameters()),
                                    lambda: iter(()))
                StageScheduler(loss_fn, agent, objectives, model, setup.probe_lq, probe_references=refs,
                               stage_length=setup.stage_length, total_stages=setup.stages, restore_fn=setup.restore,
                               trials=trials, asynchronous=setup.asynchronous,
                               apply_at=setup.apply_at).close()
            except (TypeError, ValueError) as e:
                raise ConfigError(f"invalid run config:\n  {e} (method {method})") from None
    finally:
        for agent in agents.values():
            close = getattr(getattr(agent, "backend", None), "close", None)
            if callable(close):
                close()


def check_setup(setup: Setup, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> None:
    """Build and try every part the runs of ``methods`` will use (see the module docstring); raises
    ``ConfigError`` or ``BackendError`` with the fix, and leaves every random number generator as it was."""
    methods = list(setup.methods if methods is None else methods)
    seed = (list(setup.seeds if seeds is None else seeds) or [0])[0]  # the seed changes no agent's validity
    py, legacy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # everything here runs on the CPU
        try:
            _check(setup, methods, seed)
        finally:
            random.setstate(py)
            np.random.set_state(legacy)
