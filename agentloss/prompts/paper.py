"""The paper's prompt (the LossAgent's system, history and needs parts): its templates and variables.

``PromptTemplates`` holds the three parts (``templates/system.j2``, ``history.j2``, ``needs.j2``);
``prompt_variables`` turns a decision context into the plain data they read.

The messages are one system message (the system part) and one user message (history, a blank
line, then the needs part): every chat runtime accepts that shape, and the needs part with the
answer format comes last, right before the model answers.

Variables every template gets (all plain data):

* ``loss_names``, ``names_header`` (``"l1:perceptual:gan"``), ``losses`` (``name``,
  ``description``), ``stage`` (the stage that just ended), ``total_stages``, ``stage_length``;
* ``objectives``: ``name``, ``description``, ``higher_is_better`` (``None`` when not given),
  ``direction_text`` ("lower is better" ...), ``range_text`` (``None`` when not given),
  ``reference_text``;
* ``initial`` and each of ``stages``: ``stage``, ``iteration``, ``weights``, ``weights_text``,
  ``scores`` (``name``, ``value``, ``text``, ``delta``, ``arrow``, ``verdict``), ``scores_text``,
  ``notes``; ``omitted_note`` (stages left out, or ``None``); ``summary_text`` (S0 to now);
* ``goal``, ``feedback`` (quoted lines), ``feedback_begin``/``feedback_end`` (the markers),
  ``rules`` (sentences with the actual limits), ``allowed`` (``name``, ``low``, ``high``),
  ``current_weights_text``, ``format_line``, ``format_thoughts``, ``example_line``,
  ``example_thoughts``, ``example_weights``.

Filters: ``num`` (a weight as a plain decimal) and ``score`` (a score with 4 decimals).

Choices made here: the format example uses fixed round numbers (0.5, 0.2, 0.05, 1.5, ...) taken
inside each term's bounds and never equal to that term's current weight, so that a model copying
the example visibly changes something and never "confirms" the current weights by copying; the
prompt says the numbers are only a format illustration. People's feedback goes between fixed
markers, one ``> `` quoted line each, with any ``<<<``/``>>>`` removed from it so that it cannot
close the block, and it is described as data; the rules come after it. The rules state the
actual bounds, the move limit and, for each term, the range allowed next stage (the scheduler
clips anyway).

Example:
    >>> from agentloss.prompts.sample import sample_context
    >>> v = prompt_variables(sample_context())
    >>> v["names_header"], [s["stage"] for s in v["stages"]], v["objectives"][0]["direction_text"]
    ('l1:gan', [1, 2], 'lower is better')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..proposal import format_number, format_weights
from ..types import DecisionContext, StageRecord
from .templates import TemplateSet
from .templates import fmt_score as _fmt_score

__all__ = ["FEEDBACK_BEGIN", "FEEDBACK_END", "PromptTemplates", "prompt_variables", "sanitize_feedback"]

FEEDBACK_BEGIN = "<<<BEGIN QUOTED FEEDBACK>>>"
FEEDBACK_END = "<<<END QUOTED FEEDBACK>>>"
MAX_FEEDBACK_ITEMS = 20
MAX_FEEDBACK_CHARS = 500
_EXAMPLE_VALUES = (0.5, 0.2, 0.05, 1.5, 0.1, 0.8, 0.02, 2.0, 0.3, 0.01, 5.0)


class PromptTemplates(TemplateSet):
    """The paper's three parts: system, history and needs (``templates/system.j2``, ``history.j2``, ``needs.j2``).

    Example:
        >>> t = PromptTemplates(needs="Goal: {{ goal }}")
        >>> t.render("needs", {"goal": "sharper"})
        'Goal: sharper'
        >>> t.describe()["needs"]["source"], t.describe()["system"]["source"]
        ('string', 'package:system.j2')
    """

    PARTS = ("system", "history", "needs")
    FILES: ClassVar[Mapping[str, str]] = {"system": "system.j2", "history": "history.j2", "needs": "needs.j2"}

    def __init__(self, system: Any = None, history: Any = None, needs: Any = None, **unknown: Any):
        super().__init__(system=system, history=history, needs=needs, **unknown)

    def sample_variables(self) -> dict[str, Any]:
        from .sample import sample_context

        return prompt_variables(sample_context(), needs_text="Sample goal.")


def _fmt_delta(delta: float) -> str:
    if delta == 0:
        return "0"
    if 1e-4 <= abs(delta) < 1e6:
        return f"{delta:+.4f}"
    return f"{delta:+.3g}"


def _objective_entries(ctx: DecisionContext) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for o in ctx.objectives:
        seen.add(o.name)
        hib = bool(o.higher_is_better)
        entries.append({
            "name": o.name,
            "description": o.description or "",
            "higher_is_better": hib,
            "direction_text": "higher is better" if hib else "lower is better",
            "range_text": _range_text(o.value_range),
            "reference_text": ("Full-reference: it compares each restored image with its ground truth"
                               if o.needs_reference else
                               "No-reference: it judges each restored image on its own"),
        })
    # Scores recorded for objectives the context does not describe: shown, direction not guessed.
    for rec in ctx.history:
        for name in rec.scores or {}:
            if name not in seen:
                seen.add(name)
                entries.append({
                    "name": name, "description": "", "higher_is_better": None,
                    "direction_text": "direction not given (do not assume one)", "range_text": None,
                    "reference_text": "",
                })
    return entries


def _range_text(value_range: Any) -> str | None:
    if not value_range:
        return None
    lo, hi = (list(value_range) + [None, None])[:2]
    if lo is not None and hi is not None:
        return f"{lo:g} to {hi:g}"
    if lo is not None:
        return f"{lo:g} or more"
    if hi is not None:
        return f"up to {hi:g}"
    return None


def _score_items(rec: StageRecord | None, prev: StageRecord | None, objectives: list[dict[str, Any]]) -> list[dict]:
    items = []
    for o in objectives:
        value = (rec.scores or {}).get(o["name"]) if rec is not None else None
        value = _finite(value)
        prev_value = _finite((prev.scores or {}).get(o["name"])) if prev is not None else None
        item: dict[str, Any] = {"name": o["name"], "value": value, "delta": None, "arrow": None, "verdict": None}
        if value is None:
            item["text"] = f"{o['name']}=n/a (not scored)"
        elif prev is None or prev_value is None:
            item["text"] = f"{o['name']}={_fmt_score(value)}"
        else:
            delta = value - prev_value
            arrow = "↑" if delta > 0 else "↓" if delta < 0 else "="
            if delta == 0:
                verdict = "unchanged"
            elif o["higher_is_better"] is None:
                verdict = "changed"
            else:
                verdict = "better" if (delta > 0) == o["higher_is_better"] else "worse"
            item.update(delta=delta, arrow=arrow, verdict=verdict)
            item["text"] = f"{o['name']}={_fmt_score(value)} ({arrow} {_fmt_delta(delta)}, {verdict})"
        items.append(item)
    return items


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _record_notes(rec: StageRecord, is_s0: bool) -> list[str]:
    notes: list[str] = []
    when = "S0" if is_s0 else "this stage"
    clipped = rec.decision.clipped if rec.decision is not None else []
    if clipped:
        notes.append("the weights proposed after " + when + " were clipped to the limits: "
                     + "; ".join(_shorten(str(c), 100) for c in clipped[:6]))
    if rec.fallback:
        notes.append(f"no new weights could be decided after {when} ({_shorten(str(rec.fallback), 160)}); "
                     "the same weights were kept for the next stage")
    if rec.errors:
        notes.append("scoring problems: " + "; ".join(_shorten(str(e), 100) for e in rec.errors[:3]))
    return notes


def _shorten(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _rules(ctx: DecisionContext) -> tuple[list[str], list[dict[str, Any]]]:
    names = list(ctx.loss_names)
    c = ctx.constraints
    rules = [
        f"Give one weight for each loss term, all of {', '.join(names)}, in the order of the format below.",
        ("Each weight is a plain non-negative decimal number such as 0.05 (no expressions, no units); "
         "at least one weight must be above 0."),
    ]
    overrides = [f"{n} between {format_number(c.per_loss[n][0])} and {format_number(c.per_loss[n][1])}"
                 for n in names if n in c.per_loss]
    bounds = f"Bounds: every weight must stay between {format_number(c.min_weight)} and {format_number(c.max_weight)}"
    rules.append(bounds + ("; except " + ", ".join(overrides) if overrides else "") + ".")
    if c.max_step is not None:
        s, floor = format_number(c.max_step), format_number(c.step_floor)
        rules.append(
            f"Move limit: in one stage a weight may change by at most a factor of {s}, so a weight w may become "
            f"anything from w/{s} to w*{s}. A weight of {floor} or less may be set to 0, and a weight of 0 may "
            f"rise to at most {format_number(c.step_floor * c.max_step)}."
        )
    else:
        rules.append("Move limit: none; a weight may move anywhere within its bounds in one stage.")
    allowed = []
    for n in names:
        lo, hi = c.allowed_range(n, ctx.current_weights.get(n))
        allowed.append({"name": n, "low": lo, "high": hi, "text": f"{n} from {format_number(lo)} to {format_number(hi)}"})
    current = format_weights(ctx.current_weights, names) if all(n in ctx.current_weights for n in names) else "n/a"
    rules.append(
        f"The current weights (used in stage {ctx.stage}) are {current}. Allowed for stage {ctx.stage + 1}: "
        + "; ".join(a["text"] for a in allowed) + "."
    )
    rules.append("Weights outside these limits are clipped to them automatically, so stay inside them.")
    return rules, allowed


def _example_weights(ctx: DecisionContext) -> dict[str, float]:
    """Round numbers inside each term's bounds, never equal to the term's current weight."""
    out: dict[str, float] = {}
    n_vals = len(_EXAMPLE_VALUES)
    for i, name in enumerate(ctx.loss_names):
        lo, hi = ctx.constraints.bounds(name)
        current = ctx.current_weights.get(name)
        choice = None
        for k in range(n_vals):
            v = _EXAMPLE_VALUES[(i + k) % n_vals]
            if lo <= v <= hi and (current is None or not math.isclose(v, current, rel_tol=1e-9, abs_tol=1e-12)):
                choice = v
                break
        if choice is None:
            mid = (lo + hi) / 2
            choice = mid if current is None or not math.isclose(mid, current) else hi
        out[name] = choice
    return out


def text_items(rec: StageRecord | None) -> list[dict[str, str]]:
    """What each text source said at this stage, as one quoted line of data (nothing when it failed,
    ``None``, or had nothing to say, ``""``)."""
    items = []
    for name, text in ((rec.texts or {}) if rec is not None else {}).items():
        lines = sanitize_feedback([text]) if text else []
        if lines:
            items.append({"name": name, "text": " ".join(lines).replace('"', "'")})
    return items


def sanitize_feedback(feedback: Sequence[Any]) -> list[str]:
    lines: list[str] = []
    for item in list(feedback)[-MAX_FEEDBACK_ITEMS:]:
        text = _shorten_keep_lines(str(item), MAX_FEEDBACK_CHARS)
        for line in text.splitlines():
            line = re.sub(r"<{2,}|>{2,}", "", line)  # the block's markers cannot be forged
            line = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _shorten_keep_lines(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _loss_entries(names: Sequence[str], descriptions: Mapping[str, str] | None) -> list[dict[str, str]]:
    """Each term's description for the prompt: the user's, else the loss repository's (its ``effect``)."""
    given = {k.lower(): v for k, v in (descriptions or {}).items()}
    out = []
    for n in names:
        desc = given.get(n.lower()) or _registry_description(n) or "no description given"
        out.append({"name": n, "description": desc})
    return out


def _registry_description(name: str) -> str | None:
    from ..losses.registry import loss_spec  # lazily: the loss modules import torch

    spec = loss_spec(name)
    return spec.prompt_text or None if spec is not None else None


def _default_goal(objectives: list[dict[str, Any]]) -> str:
    if not objectives:
        return "Improve the restored images' scores."
    parts = [f"{o['name']} ({o['direction_text']})" if o["higher_is_better"] is not None else o["name"]
             for o in objectives]
    return "Improve all objectives, " + ", ".join(parts) + ", keeping a good balance between them."


def prompt_variables(
    context: DecisionContext,
    *,
    needs_text: str | None = None,
    loss_descriptions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the templates may use, as plain data (see the module docstring), full history.

    """
    ctx = context
    names = list(ctx.loss_names)
    objectives = _objective_entries(ctx)
    history = list(ctx.history)
    s0 = next((r for r in history if r.stage == 0), None)
    rows_src = [r for r in history if r.stage != 0]

    init_weights = dict(s0.weights) if s0 is not None else dict(ctx.initial_weights)
    initial = {
        "stage": 0,
        "iteration": s0.iteration if s0 is not None else 0,
        "weights": init_weights,
        "weights_text": _weights_text(init_weights, names),
        "scores": _score_items(s0, None, objectives),
        "notes": _record_notes(s0, True) if s0 is not None else [],
        "texts": text_items(s0),
    }
    initial["scores_text"] = _scores_text(initial["scores"], s0)

    stages = []
    prev = s0
    for rec in rows_src:
        items = _score_items(rec, prev, objectives)
        stages.append({
            "stage": rec.stage,
            "iteration": rec.iteration,
            "weights": dict(rec.weights),
            "weights_text": _weights_text(rec.weights, names),
            "scores": items,
            "scores_text": _scores_text(items, rec),
            "notes": _record_notes(rec, False),
            "texts": text_items(rec),
        })
        prev = rec

    summary_text = None
    if s0 is not None and rows_src:
        parts = []
        last = rows_src[-1]
        for item in _score_items(last, s0, objectives):
            first = _finite((s0.scores or {}).get(item["name"]))
            if item["delta"] is not None and first is not None:
                parts.append(f"{item['name']} {_fmt_score(first)} -> {_fmt_score(item['value'])} "
                             f"({_fmt_delta(item['delta'])}, {item['verdict']})")
        summary_text = "; ".join(parts) or None

    rules, allowed = _rules(ctx)
    example = _example_weights(ctx)
    goal = (needs_text or "").strip() or _default_goal(objectives)
    return {
        "loss_names": names,
        "names_header": ":".join(names),
        "losses": _loss_entries(names, loss_descriptions),
        "objectives": objectives,
        "text_sources": [{"name": o.name, "description": o.description or "no description given"}
                         for o in ctx.text_sources],
        "stage": ctx.stage,
        "total_stages": ctx.total_stages,
        "stage_length": ctx.stage_length,
        "initial": initial,
        "stages": stages,
        "omitted_note": None,
        "summary_text": summary_text,
        "goal": goal,
        "feedback": sanitize_feedback(ctx.feedback or []),
        "feedback_begin": FEEDBACK_BEGIN,
        "feedback_end": FEEDBACK_END,
        "rules": rules,
        "allowed": allowed,
        "current_weights_text": _weights_text(ctx.current_weights, names),
        "format_line": "Weights: " + ":".join(names) + "=" + ":".join(f"<{n} weight>" for n in names),
        "format_thoughts": "Thoughts: <one short sentence: what you change and why>",
        "example_weights": example,
        "example_line": "Weights: " + format_weights(example, names),
        "example_thoughts": "Thoughts: A one-sentence reason for these weights.",
    }


def _weights_text(weights: Mapping[str, float], names: Sequence[str]) -> str:
    if all(n in weights for n in names):
        return format_weights(dict(weights), names)
    return ", ".join(f"{k}={format_number(v)}" for k, v in weights.items()) or "n/a"


def _scores_text(items: list[dict[str, Any]], rec: StageRecord | None) -> str:
    if rec is None or not items:
        return "not scored"
    return "; ".join(i["text"] for i in items)
