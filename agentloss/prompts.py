"""The LossAgent prompt: a system part, a historical part and a customized-needs part.

Three Jinja2 templates (``agentloss/templates/system.j2``, ``history.j2``, ``needs.j2``) are
rendered in a sandbox (``jinja2.sandbox.SandboxedEnvironment``, ``StrictUndefined``, no
autoescape, ``trim_blocks``/``lstrip_blocks``) from plain variables computed here, so that a
custom template can reword the prompt but cannot reach Python objects. Each part can be replaced
by a file path or a template string (``PromptTemplates(needs="...")``).

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
    >>> from agentloss.agents.base import DecisionContext, ObjectiveInfo
    >>> from agentloss.constraints import WeightConstraints
    >>> from agentloss.records import StageRecord
    >>> ctx = DecisionContext(
    ...     loss_names=["l1", "gan"], current_weights={"l1": 1.0, "gan": 0.01},
    ...     initial_weights={"l1": 1.0, "gan": 0.01},
    ...     history=[StageRecord(0, 0, {"l1": 1.0, "gan": 0.01}, {"psnr": 25.0}),
    ...              StageRecord(1, 100, {"l1": 1.0, "gan": 0.01}, {"psnr": 25.5})],
    ...     objectives=[ObjectiveInfo("psnr", True, "fidelity to the reference, in dB")],
    ...     constraints=WeightConstraints(max_step=2.0), stage=1)
    >>> msgs = build_messages(ctx, needs_text="Raise PSNR.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> "psnr=25.5000 (↑ +0.5000, better)" in msgs[1]["content"]
    True
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .agents.base import DecisionContext, ObjectiveInfo
from .constraints import WeightConstraints
from .proposal import _num as format_number
from .proposal import format_weights
from .records import StageRecord, read_meta, read_records

__all__ = [
    "DEFAULT_LOSS_DESCRIPTIONS",
    "PromptTemplateError",
    "PromptTemplates",
    "build_messages",
    "context_from_run",
    "dry_run_messages",
    "estimate_tokens",
    "fit_history",
    "prompt_variables",
    "reserve_tokens",
]

Message = dict[str, str]
PARTS = ("system", "history", "needs")

DEFAULT_LOSS_DESCRIPTIONS: dict[str, str] = {
    "l1": "mean absolute pixel error against the ground truth; favours fidelity (PSNR/SSIM) but "
          "averages out fine texture, so results look smooth",
    "mse": "mean squared pixel error; optimises PSNR directly and blurs texture even more than l1",
    "charbonnier": "a smooth, robust variant of l1 (pixel error); favours fidelity like l1",
    "ssim": "1 - SSIM against the ground truth; preserves local structure, contrast and edges",
    "fft": "difference of the Fourier spectra; pushes high-frequency detail and sharpness",
    "perceptual": "distance between deep (VGG) features of the output and the ground truth; gives "
                  "sharper, more natural texture at a small cost in PSNR",
    "gan": "adversarial loss from a discriminator; produces realistic texture and better "
           "no-reference quality, but too much of it adds artefacts, lowers PSNR and can destabilise "
           "training, so it is usually much smaller than the pixel terms",
    "lpips": "learned perceptual distance (LPIPS) to the ground truth; rewards perceptual similarity "
             "of texture and detail",
}

FEEDBACK_BEGIN = "<<<BEGIN QUOTED FEEDBACK>>>"
FEEDBACK_END = "<<<END QUOTED FEEDBACK>>>"
MAX_FEEDBACK_ITEMS = 20
MAX_FEEDBACK_CHARS = 500
_EXAMPLE_VALUES = (0.5, 0.2, 0.05, 1.5, 0.1, 0.8, 0.02, 2.0, 0.3, 0.01, 5.0)


class PromptTemplateError(ValueError):
    """A prompt template that cannot be loaded or rendered (syntax, missing variable, unsafe access).

    Example:
        >>> try:
        ...     PromptTemplates(system="{{ ''.__class__ }}").render("system", {})
        ... except PromptTemplateError as e:
        ...     print(type(e.__cause__).__name__)
        SecurityError
    """


# ---------------------------------------------------------------------------------------------
# Templates


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["num"] = lambda v: format_number(float(v))
    env.filters["score"] = _fmt_score
    return env


class PromptTemplates:
    """The three prompt parts; each ``None`` (the packaged default), a file path or a template string.

    A ``pathlib.Path`` is always a file. A ``str`` is a file when it is one line without ``{``
    that names an existing file or ends in ``.j2``/``.jinja``/``.jinja2``/``.txt`` (a missing file
    is then an error, not a template); otherwise it is the template text itself. Templates are
    compiled here, so a syntax error is raised at construction, as ``PromptTemplateError``.

    Example:
        >>> t = PromptTemplates(needs="Goal: {{ goal }}")
        >>> t.render("needs", {"goal": "sharper"})
        'Goal: sharper'
        >>> t.describe()["needs"]["source"], t.describe()["system"]["source"]
        ('string', 'package:system.j2')
    """

    def __init__(self, system: Any = None, history: Any = None, needs: Any = None):
        self._env = _environment()
        self._sources: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._templates: dict[str, Any] = {}
        for part, spec in (("system", system), ("history", history), ("needs", needs)):
            text, label = _load_source(part, spec)
            try:
                self._templates[part] = self._env.from_string(text)
            except TemplateError as exc:
                raise PromptTemplateError(f"prompt template {part!r} ({label}) does not compile: {exc}") from exc
            self._sources[part] = text
            self._labels[part] = label

    @classmethod
    def coerce(cls, value: PromptTemplates | Mapping[str, Any] | None) -> PromptTemplates:
        """``None`` -> defaults; a mapping with keys among system/history/needs -> those parts.

        Example:
            >>> PromptTemplates.coerce({"system": "You are {{ 'an' }} expert."}).render("system", {})
            'You are an expert.'
        """
        if value is None:
            return cls()
        if isinstance(value, PromptTemplates):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - set(PARTS)
            if unknown:
                raise PromptTemplateError(f"unknown prompt part(s) {sorted(unknown)}; the parts are {list(PARTS)}")
            return cls(**{k: value[k] for k in PARTS if k in value})
        raise PromptTemplateError(f"templates must be None, a dict or PromptTemplates, got {type(value).__name__}")

    def render(self, part: str, variables: Mapping[str, Any]) -> str:
        """Render one part; any failure (unsafe attribute, undefined variable) is a ``PromptTemplateError``."""
        if part not in self._templates:
            raise PromptTemplateError(f"unknown prompt part {part!r}; the parts are {list(PARTS)}")
        try:
            text = self._templates[part].render(**variables)
        except Exception as exc:  # SecurityError, UndefinedError, errors inside filters ...
            kind = type(exc).__name__
            raise PromptTemplateError(
                f"prompt template {part!r} ({self._labels[part]}) failed to render: {kind}: {exc}"
            ) from exc
        return _tidy(text)

    def check(self) -> None:
        """Render every part once with a small sample context: a bad template fails here, not mid-run."""
        variables = prompt_variables(_sample_context(), needs_text="Sample goal.")
        for part in PARTS:
            self.render(part, variables)

    def describe(self) -> dict[str, dict[str, str]]:
        """Where each part came from and a hash of its text, for the run's metadata."""
        return {
            part: {"source": self._labels[part], "sha256": hashlib.sha256(self._sources[part].encode()).hexdigest()[:16]}
            for part in PARTS
        }


def _load_source(part: str, spec: Any) -> tuple[str, str]:
    if spec is None:
        ref = importlib.resources.files("agentloss").joinpath("templates", f"{part}.j2")
        return ref.read_text(encoding="utf-8"), f"package:{part}.j2"
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise PromptTemplateError(f"prompt template file for {part!r} not found: {path}")
        return path.read_text(encoding="utf-8"), str(path)
    if isinstance(spec, str):
        return spec, "string"
    raise PromptTemplateError(f"prompt template {part!r} must be a path or a template string, got {type(spec).__name__}")


def _looks_like_path(text: str) -> bool:
    if "\n" in text or "{" in text or not text.strip():
        return False
    if text.endswith((".j2", ".jinja", ".jinja2", ".txt")):
        return True
    try:
        return Path(text).expanduser().is_file()
    except OSError:
        return False


def _tidy(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------------------------------------
# Variables


def _fmt_score(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


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
    info = (rec.decision or {}).get("info") or {}
    clipped = info.get("clipped") or []
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


def _allowed_range(c: WeightConstraints, name: str, previous: float | None) -> tuple[float, float]:
    lo, hi = c.bounds(name)
    if previous is None:
        return lo, hi
    s_lo, s_hi = c.step_range(previous)
    a, b = max(lo, s_lo), min(hi, s_hi)
    if a > b:
        a = b = min(max(previous, lo), hi)
    return a, b


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
        lo, hi = _allowed_range(c, n, ctx.current_weights.get(n))
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


def _sanitize_feedback(feedback: Sequence[Any]) -> list[str]:
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
    merged = {**DEFAULT_LOSS_DESCRIPTIONS, **{k.lower(): v for k, v in (descriptions or {}).items()}}
    out = []
    for n in names:
        desc = merged.get(n) or merged.get(n.lower()) or _registry_description(n) or "no description given"
        out.append({"name": n, "description": desc})
    return out


def _registry_description(name: str) -> str | None:
    try:  # lazily: the registry imports torch
        from .losses.registry import LOSS_REGISTRY, resolve_loss_name

        return LOSS_REGISTRY[resolve_loss_name(name)].description or None
    except Exception:  # noqa: BLE001
        return None


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

    Example:
        >>> v = prompt_variables(_sample_context())
        >>> v["names_header"], [s["stage"] for s in v["stages"]], v["objectives"][0]["direction_text"]
        ('l1:gan', [1, 2], 'lower is better')
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
        "stage": ctx.stage,
        "total_stages": ctx.total_stages,
        "stage_length": ctx.stage_length,
        "initial": initial,
        "stages": stages,
        "omitted_note": None,
        "summary_text": summary_text,
        "goal": goal,
        "feedback": _sanitize_feedback(ctx.feedback or []),
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


# ---------------------------------------------------------------------------------------------
# Messages and history fitting


def _messages(templates: PromptTemplates, variables: Mapping[str, Any]) -> list[Message]:
    system = templates.render("system", variables)
    history = templates.render("history", variables)
    needs = templates.render("needs", variables)
    return [{"role": "system", "content": system}, {"role": "user", "content": history + "\n\n" + needs}]


def _windowed(variables: dict[str, Any], keep: int, reason: str) -> tuple[dict[str, Any], str | None]:
    stages = variables["stages"]
    if keep >= len(stages):
        return variables, None
    keep = max(1, keep)
    dropped, kept = stages[:-keep], stages[-keep:]
    note = (f"{_span(dropped, True)} left out {reason}; S0 and {_span(kept, False)} are shown"
            if dropped else None)
    return {**variables, "stages": kept, "omitted_note": note}, note


def _span(rows: list[dict[str, Any]], subject: bool) -> str:
    a, b = rows[0]["stage"], rows[-1]["stage"]
    if a == b:
        return f"Stage {a} is" if subject else f"stage {a}"
    return f"Stages {a} to {b} are" if subject else f"stages {a} to {b}"


def build_messages(
    context: DecisionContext,
    templates: PromptTemplates | Mapping[str, Any] | None = None,
    *,
    needs_text: str | None = None,
    history_window: int | None = None,
    loss_descriptions: Mapping[str, str] | None = None,
) -> list[Message]:
    """The chat messages for one decision: ``[system, user(history + needs)]``.

    ``history_window`` keeps only the latest N stages (S0 always stays) and says so in the prompt.

    Example:
        >>> msgs = build_messages(_sample_context(), history_window=1)
        >>> "[Stage 1 is left out (the history window is 1 stage(s)); S0 and stage 2 are shown]" in msgs[1]["content"]
        True
    """
    messages, _ = fit_history(context, templates, needs_text=needs_text, history_window=history_window,
                              loss_descriptions=loss_descriptions)
    return messages


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A rough token count when the backend cannot count: 4 characters a token, plus 4 a message.

    Example:
        >>> estimate_tokens([{"role": "user", "content": "x" * 40}])
        14
    """
    return sum(math.ceil(len(m.get("content", "")) / 4) + 4 for m in messages)


def reserve_tokens(max_tokens: int, max_tries: int = 1) -> int:
    """Tokens to keep free besides the prompt: the answer, and for a retry the previous answer plus
    the correction (a retry sends the prompt, the last answer and a short correction).

    Example:
        >>> reserve_tokens(200, 1), reserve_tokens(200, 3)
        (200, 550)
    """
    extra = max_tokens + 150 if max_tries > 1 else 0
    return int(max_tokens) + extra


def fit_history(
    context: DecisionContext,
    templates: PromptTemplates | Mapping[str, Any] | None = None,
    *,
    needs_text: str | None = None,
    backend: Any = None,
    context_size: int | None = None,
    count_tokens: Callable[[list[Message]], int | None] | None = None,
    reserve: int = 256,
    history_window: int | None = None,
    loss_descriptions: Mapping[str, str] | None = None,
) -> tuple[list[Message], str | None]:
    """Messages with as much history as fits, and a note (for the record) of what was left out.

    The whole history is kept while ``prompt tokens + reserve <= context_size``; otherwise the
    oldest stages are dropped (S0 and the newest stage always stay), the prompt says which stages
    are left out, and the same sentence is returned. ``context_size``/``count_tokens`` default to
    the backend's; a count of ``None`` (or an error) falls back to ``estimate_tokens``. With no
    context size the history is not shortened (except by ``history_window``).

    Example:
        >>> ctx = _sample_context()
        >>> full, note = fit_history(ctx)
        >>> note is None
        True
        >>> short, note = fit_history(ctx, context_size=estimate_tokens(full) - 5, reserve=0)
        >>> note
        "Stage 1 is left out to fit the model's context window; S0 and stage 2 are shown"
    """
    tmpl = PromptTemplates.coerce(templates)
    variables = prompt_variables(context, needs_text=needs_text, loss_descriptions=loss_descriptions)
    n_stages = len(variables["stages"])
    window_note = None
    if history_window is not None and n_stages > max(1, int(history_window)):
        variables, window_note = _windowed(variables, int(history_window),
                                           f"(the history window is {max(1, int(history_window))} stage(s))")
        variables["omitted_note"] = window_note
        n_stages = len(variables["stages"])

    if backend is not None:
        if context_size is None:
            context_size = getattr(backend, "context_size", None)
        if count_tokens is None:
            count_tokens = getattr(backend, "count_tokens", None)

    def tokens(msgs: list[Message]) -> int:
        if count_tokens is not None:
            try:
                n = count_tokens(msgs)
            except Exception:  # noqa: BLE001
                n = None
            if n is not None:
                return int(n)
        return estimate_tokens(msgs)

    full = _messages(tmpl, variables)
    if not context_size or n_stages <= 1 or tokens(full) + reserve <= context_size:
        return full, window_note

    budget = int(context_size) - int(reserve)
    reason = "to fit the model's context window"

    def attempt(keep: int) -> tuple[list[Message], str | None]:
        v, note = _windowed(variables, keep, reason)
        return _messages(tmpl, v), note

    lo, hi = 1, n_stages - 1  # the largest number of newest stages that fits, at least 1
    best = attempt(1)
    if tokens(best[0]) <= budget:
        while lo < hi:
            mid = (lo + hi + 1) // 2
            cand = attempt(mid)
            if tokens(cand[0]) <= budget:
                lo, best = mid, cand
            else:
                hi = mid - 1
        messages, note = best
    else:
        messages, note = best
        note = (note or "") + " (the prompt may still be too long for the context window)"
    return messages, note


# ---------------------------------------------------------------------------------------------
# Dry run from a run directory


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
                                          dict(last.per_image), None, {}, None, list(last.errors),
                                          dict(last.timings))]
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
    config's ``templates``, ``needs`` (or ``goal``), ``history_window``, ``loss_descriptions``.
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
        ctx, templates, needs_text=cfg.get("needs") or cfg.get("goal"), backend=backend,
        context_size=context_size, reserve=reserve_tokens(max_tokens, max_tries),
        history_window=cfg.get("history_window"), loss_descriptions=cfg.get("loss_descriptions"),
    )
    return messages


# ---------------------------------------------------------------------------------------------


def _sample_context() -> DecisionContext:
    """A small complete context (two stages, a fallback, feedback) for template checks and doctests."""
    w = {"l1": 1.0, "gan": 0.01}
    history = [
        StageRecord(0, 0, dict(w), {"niqe": 6.0, "psnr": 25.0}),
        StageRecord(1, 100, dict(w), {"niqe": 5.8, "psnr": 24.9}, fallback="sample fallback"),
        StageRecord(2, 200, dict(w), {"niqe": 5.7, "psnr": None}),
    ]
    return DecisionContext(
        loss_names=["l1", "gan"], current_weights=dict(w), initial_weights=dict(w), history=history,
        objectives=[ObjectiveInfo("niqe", False, "naturalness", (0.0, 100.0)),
                    ObjectiveInfo("psnr", True, "fidelity in dB", None, True)],
        constraints=WeightConstraints(max_step=2.0, per_loss={"gan": (0.0, 1.0)}), stage=2,
        total_stages=5, stage_length=100, feedback=["sample feedback"],
    )
