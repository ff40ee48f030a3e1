"""Replaying a run for a dry run: the context of its latest decision, and the messages an agent would send.

``agentloss prompt RUN_DIR --config agent.yaml`` prints these: the decision at the end of the last
recorded stage is rebuilt from ``stages.jsonl`` and ``run.json`` and rendered with the agent the
config names (the paper's prompt for ``type: llm``, the guided agent's for ``type: guided``); no
model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from ..constraints import WeightConstraints
from ..records import read_meta, read_records
from ..types import DecisionContext, ObjectiveInfo, StageRecord
from .fitting import Message, fit_history, reserve_tokens
from .paper import PromptTemplates

__all__ = ["context_from_run", "dry_run_messages"]


def _objective_from_dict(d: Mapping[str, Any]) -> ObjectiveInfo | None:
    known = {f.name for f in fields(ObjectiveInfo)}
    data = {k: v for k, v in d.items() if k in known}
    if "name" not in data or "higher_is_better" not in data or data["higher_is_better"] is None:
        return None  # direction unknown: the prompt shows the scores without guessing one
    vr = data.get("value_range")
    if vr is not None:
        data["value_range"] = tuple(vr)
    data["higher_is_better"] = bool(data["higher_is_better"])
    return ObjectiveInfo(**data)


def context_from_run(
    records: Sequence[StageRecord], meta: Mapping[str, Any], *, feedback: Sequence[str] | None = None
) -> DecisionContext:
    """The ``DecisionContext`` of the decision at the end of the last recorded stage.

    ``meta`` is the run's ``run.json``; missing keys fall back to what the records show (loss
    names and initial weights from S0, default constraints, no objective descriptions: the
    directions of undescribed objectives are then shown as unknown, never guessed).

    Example:
        >>> recs = [StageRecord(0, 0, {"l1": 1.0}, {"psnr": 25.0}), StageRecord(1, 10, {"l1": 1.0}, {"psnr": 26.0})]
        >>> ctx = context_from_run(recs, {"objectives": [{"name": "psnr", "higher_is_better": True}]})
        >>> ctx.stage, ctx.loss_names, ctx.current_weights
        (1, ['l1'], {'l1': 1.0})
    """
    if not records:
        raise ValueError("the run has no stage records yet (stages.jsonl is empty)")
    records = list(records)
    s0 = next((r for r in records if r.stage == 0), None)
    last = records[-1]
    loss_names = list(meta.get("loss_names") or (s0.weights if s0 else last.weights))
    initial = dict(meta.get("initial_weights") or (s0.weights if s0 else last.weights))
    objectives: list[ObjectiveInfo] = []
    raw_obj = meta.get("objectives") or []
    if isinstance(raw_obj, Mapping):
        raw_obj = [{"name": k, **(v or {})} for k, v in raw_obj.items()]
    for d in raw_obj:
        if isinstance(d, Mapping):
            info = _objective_from_dict(d)
            if info is not None:
                objectives.append(info)
    cons = meta.get("constraints") or {}
    known = {f.name for f in fields(WeightConstraints)}
    cons = {k: v for k, v in cons.items() if k in known}
    if cons.get("per_loss"):
        cons["per_loss"] = {k: tuple(v) for k, v in cons["per_loss"].items()}
    constraints = WeightConstraints(**cons)
    # Decisions of the last stage are not part of what the agent saw when making it.
    history = records[:-1] + [StageRecord(last.stage, last.iteration, dict(last.weights), dict(last.scores),
                                          per_image=dict(last.per_image), texts=dict(last.texts),
                                          errors=list(last.errors), warnings=list(last.warnings),
                                          timings=dict(last.timings))]
    return DecisionContext(
        loss_names=loss_names,
        current_weights=dict(last.weights),
        initial_weights=initial,
        history=history,
        objectives=objectives,
        constraints=constraints,
        stage=last.stage,
        total_stages=meta.get("total_stages"),
        stage_length=meta.get("stage_length"),
        feedback=list(feedback if feedback is not None else meta.get("feedback") or []),
    )


def dry_run_messages(
    agent_config: Mapping[str, Any] | None,
    run_dir: str | os.PathLike[str],
    *,
    backend: Any = None,
    feedback: Sequence[str] | None = None,
) -> list[Message]:
    """The exact messages an LLM agent with ``agent_config`` sends for the run's latest decision.

    Rebuilds the context of the decision at the end of the last recorded stage from
    ``run_dir/stages.jsonl`` and ``run.json`` (see ``context_from_run``) and renders it with the
    config's ``templates``, ``needs``, ``history_window``, ``loss_descriptions``.
    The backend is not created (no model is loaded): history is shortened only when ``backend``
    is passed or the config's ``backend`` names a ``context_size`` (or ``n_ctx``), then with the
    4-characters-a-token estimate, reserving room for ``max_tokens``/``max_tries`` as the agent
    does.

    Example:
        >>> import tempfile
        >>> from agentloss.records import RecordWriter
        >>> d = tempfile.mkdtemp(); w = RecordWriter(d)
        >>> w.write_meta({"loss_names": ["l1", "gan"], "objectives": [{"name": "niqe", "higher_is_better": False}]})
        >>> w.append(StageRecord(0, 0, {"l1": 1.0, "gan": 0.01}, {"niqe": 6.0}))
        >>> msgs = dry_run_messages({"needs": "Lower NIQE."}, d)
        >>> "Goal: Lower NIQE." in msgs[1]["content"], "niqe=6.0000" in msgs[1]["content"]
        (True, True)
    """
    cfg = dict(agent_config or {})
    if "goal" in cfg:
        raise ValueError("the goal text is called 'needs' (the paper's customized needs); rename 'goal' to 'needs'")
    records = read_records(run_dir)
    meta = read_meta(run_dir)
    ctx = context_from_run(records, meta, feedback=feedback)
    templates = PromptTemplates.coerce(cfg.get("templates"))
    context_size = None
    if backend is None:
        bcfg = cfg.get("backend")
        if isinstance(bcfg, Mapping):
            context_size = bcfg.get("context_size") or bcfg.get("n_ctx")
    max_tokens = int(cfg.get("max_tokens", 200))
    max_tries = int(cfg.get("max_tries", 3))
    messages, _ = fit_history(
        ctx, templates, needs_text=cfg.get("needs"), backend=backend,
        context_size=context_size, reserve=reserve_tokens(max_tokens, max_tries),
        history_window=cfg.get("history_window"), loss_descriptions=cfg.get("loss_descriptions"),
    )
    return messages
