"""Reading a model's answer: the next stage's loss weights, as real language models write them.

The answer format the prompt asks for is the LossAgent paper's two lines::

    Weights: l1:perceptual:gan=0.7:0.3:0.05
    Thoughts: NIQE improved, so I keep pushing the perceptual terms.

``parse_proposal`` accepts that line however models actually write it -- inside prose, with
markdown emphasis (``**Weights:**``), in code fences, with spaces around ``:``/``=``, loss names in
any case and any order, values without names when their count matches, ints and scientific
notation, ``name=value`` pairs, the line broken after ``Weights:`` -- and an equivalent JSON
object (``{"weights": {"l1": 0.7, ...}, "thoughts": "..."}`` or a flat ``{"l1": 0.7, ...}``),
fenced or not. Closed ``<think>...</think>`` blocks of reasoning models are ignored.

Which answer counts when there are several: the LAST one. A ``Weights:`` line (or a weights JSON
object) counts as an answer as soon as it holds a number; the last such answer in the text is the
one read, and if it is broken the whole answer is rejected with the reason, rather than silently
falling back to an earlier line. Models restate the format example or their current weights
before answering far more often than they answer first and restate something after, and an
earlier line taken by mistake would be a wrong decision that looks valid, whereas a rejected
answer is retried with the reason. Lines such as ``Current weights: ...`` or ``Previous weights:
...`` are never answers (only ``Weights:`` and ``New/Next/Proposed/Final/Updated/Suggested/
Recommended/Adjusted weights:`` are).

``ProposalError`` says what was wrong in words a model can act on; the LLM agent sends it back.
It is the only exception an answer can cause (an empty ``loss_names`` is the caller's ``ValueError``).

Whatever the answer holds, reading it takes time linear in its length (no pattern backtracks over
runs of ``-``, ``#``, ``_`` or spaces, and no ``{``/``<think>`` is rescanned to the end of the text),
and its length is capped: an answer longer than ``MAX_ANSWER_CHARS`` is not read at all but
rejected, the message saying so and asking for the two lines. JSON nested deeper than
``MAX_JSON_DEPTH`` is not read (a broken answer if it starts with a ``"weights"`` key); JSON
integers too large for a float read as infinite, and so are rejected as not finite.

``proposal_grammar`` returns a GBNF grammar (llama.cpp) that admits exactly the two-line format
with the given names, bounded numbers and a bounded ASCII ``Thoughts`` line, so a constrained
local model cannot produce an unparseable (or endless) answer.

Example:
    >>> p = parse_proposal("Sure!\\n**Weights:** L1:Perceptual:GAN = 0.7:0.3:5e-2\\nThoughts: more GAN",
    ...                    ["l1", "perceptual", "gan"])
    >>> p.weights, p.thoughts, p.format
    ({'l1': 0.7, 'perceptual': 0.3, 'gan': 0.05}, 'more GAN', 'line')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from .constraints import WeightError, validate_weights

__all__ = ["Proposal", "ProposalError", "format_number", "format_weights", "parse_proposal", "proposal_grammar"]

MAX_THOUGHTS_CHARS = 2000
# About 25k tokens: far beyond any answer the agents ask for (max_tokens 120-200, a reasoning model's
# think block included), so only a runaway or hostile answer is cut; reading one this long still
# takes well under a second.
MAX_ANSWER_CHARS = 100_000
# A weights object nests two levels ({"weights": {...}}). Deeper JSON is read as far as this (the
# decoder recursing ~1000 levels would raise RecursionError); beyond it, it is one object that is
# not an answer, or a broken answer when it starts with a "weights" key.
MAX_JSON_DEPTH = 64


class ProposalError(ValueError):
    """An answer from which no usable weights could be read; the message says why, for the model.

    Example:
        >>> try:
        ...     parse_proposal("Weights: l1:vgg=1:2", ["l1", "gan"])
        ... except ProposalError as e:
        ...     print(str(e).split(";")[0])
        unknown loss term(s) 'vgg'
    """


class Proposal(BaseModel):
    """Weights read from an answer (in ``loss_names`` order), its thoughts, and the form it used.

    Example:
        >>> Proposal(weights={"l1": 1.0}, thoughts=None, format="json").weights
        {'l1': 1.0}
    """

    weights: dict[str, float]
    thoughts: str | None = None
    format: Literal["line", "json"] = "line"


def format_weights(weights: dict[str, float], names: Sequence[str] | None = None) -> str:
    """The paper's ``name1:name2=v1:v2`` notation, values written as plain short decimals.

    Example:
        >>> format_weights({"l1": 1.0, "gan": 0.005})
        'l1:gan=1:0.005'
    """
    names = list(names) if names is not None else list(weights)
    return ":".join(names) + "=" + ":".join(format_number(weights[n]) for n in names)


def format_number(value: float) -> str:
    """A weight as a plain decimal (no exponent), at most 6 significant digits."""
    text = f"{float(value):.6g}"
    if "e" in text or "E" in text:
        text = f"{float(value):.10f}".rstrip("0").rstrip(".")
        text = text or "0"
    return text


# ---------------------------------------------------------------------------------------------
# Regular expressions

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w])|[+-]?(?:nan|infinity|inf)\b"
_NAME = r"[A-Za-z][\w.\-]*"
_SEP = r"\s*[:/,]\s*"
# One optional separator between pairs; written so that a run of spaces has one way to match
# (``\s*(?:sep)?\s*`` split long runs in quadratically many ways before failing).
_PAIR_SEP = r"\s*(?:(?:[,;]|\band\b)\s*)?"

_PAPER_RE = re.compile(
    rf"(?P<names>{_NAME}(?:{_SEP}{_NAME})*)\s*=\s*(?P<vals>(?:{_NUM})(?:{_SEP}(?:{_NUM}))*)", re.IGNORECASE
)
_PAIR_RE = re.compile(rf"(?P<name>{_NAME})\s*[:=]\s*(?P<val>{_NUM})", re.IGNORECASE)
_PAIRS_RE = re.compile(
    rf"{_NAME}\s*[:=]\s*(?:{_NUM})(?:{_PAIR_SEP}{_NAME}\s*[:=]\s*(?:{_NUM}))*", re.IGNORECASE
)
_VALUES_RE = re.compile(rf"(?P<vals>(?:{_NUM})(?:{_SEP}(?:{_NUM}))*)", re.IGNORECASE)
_NUM_RE = re.compile(_NUM, re.IGNORECASE)
# List and heading marks before a label. One mark per repetition: ``(?:[-+>#•]+\s*)*`` could split a
# run of 30 dashes in 2**29 ways, and a markdown rule (``------``) made every label pattern backtrack
# through all of them.
_LEAD = r"^\s*(?:(?:[-+>#•]|\d+[.)])\s*)*"
_ADJ = r"(?:(?:new|next|proposed|final|updated|suggested|recommended|adjusted|my)\s+)*"
_WEIGHTS_LABEL_RE = re.compile(
    _LEAD + _ADJ + r"(?:loss\s+)?weights?\s*(?:\((?P<paren>[^)]*)\)\s*)?[:=]\s*(?P<body>.*)$", re.IGNORECASE
)
_THOUGHTS_LABEL_RE = re.compile(
    _LEAD + r"(?:thoughts?|reasoning|reason|rationale|explanation)\s*[:=]\s*(?P<body>.*)$", re.IGNORECASE
)
_INLINE_THOUGHTS_RE = re.compile(r"\b(?:thoughts?|reasoning|rationale)\s*:\s*(?P<body>.*)$", re.IGNORECASE)
_THINK_OPEN_RE = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_THINK_CLOSE_RE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


_UNDERSCORES_RE = re.compile(r"_+")
_WORD_RE = re.compile(r"\w")


def _clean(line: str) -> str:
    """Drop markdown emphasis and inline-code marks, keeping underscores inside names."""
    line = re.sub(r"[*`~]+", "", line)
    return _UNDERSCORES_RE.sub(_emphasis_underscores, line).strip()


def _emphasis_underscores(m: re.Match[str]) -> str:
    """A run of ``_`` stays only between two word characters (``pixel_l1``); at a word's edge it is
    emphasis. (The old pattern, a lookbehind-or-lookahead around ``_+``, said the same but rescanned
    each run from every position in it: quadratic in the run's length.)"""
    line, start, end = m.string, m.start(), m.end()
    inside = start > 0 and end < len(line) and _WORD_RE.match(line, start - 1) and _WORD_RE.match(line, end)
    return m.group() if inside else ""


def _strip_think(text: str) -> str:
    """Closed ``<think>...</think>`` blocks replaced by a newline, each opening matched with the first
    closing after it (an unclosed block stays). A lazy ``<think>.*?</think>`` pattern did the same but
    scanned to the end of the text from every unclosed ``<think>``: quadratic."""
    parts: list[str] = []
    pos = 0
    while (opening := _THINK_OPEN_RE.search(text, pos)) is not None:
        closing = _THINK_CLOSE_RE.search(text, opening.end())
        if closing is None:
            break
        parts += [text[pos:opening.start()], "\n"]
        pos = closing.end()
    return "".join(parts) + text[pos:] if parts else text


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


@dataclass
class _Candidate:
    pos: int
    kind: str  # "line" | "json"
    weights: dict[str, Any] | None  # raw name -> raw value, as written
    values: list[Any] | None  # values written without names
    thoughts: str | None
    error: str | None  # a candidate that could not be read at all
    end_line: int = -1  # index of the line the candidate ends on (line candidates)


# ---------------------------------------------------------------------------------------------
# Public API


def parse_proposal(text: str, loss_names: Sequence[str]) -> Proposal:
    """Read the weights (and thoughts) a model answered, or raise ``ProposalError`` saying why.

    ``loss_names`` are the loss terms in order; the returned weights follow that order whatever
    order the answer used. See the module docstring for what is accepted and which answer counts
    when several appear (the last).

    Example:
        >>> parse_proposal("Weights: 0.7:0.3", ["l1", "gan"]).weights
        {'l1': 0.7, 'gan': 0.3}
        >>> parse_proposal('```json\\n{"weights": {"GAN": 0.1, "L1": 1}}\\n```', ["l1", "gan"]).weights
        {'l1': 1.0, 'gan': 0.1}
        >>> parse_proposal("Weights: l1:gan=1:-0.5", ["l1", "gan"])
        Traceback (most recent call last):
        ...
        agentloss.proposal.ProposalError: the weight for 'gan' is negative (-0.5); every weight must be 0 or more
    """
    names = [str(n) for n in loss_names]
    if not names:
        raise ValueError("loss_names is empty")
    if not isinstance(text, str) or not text.strip():
        raise ProposalError(_missing_message(names, "the answer is empty"))
    if len(text) > MAX_ANSWER_CHARS:
        raise ProposalError(_missing_message(
            names, f"the answer is {len(text)} characters long and was not read (the limit is {MAX_ANSWER_CHARS}); "
            "answer with just the two lines"))
    try:
        return _parse(text, names)
    except (RecursionError, OverflowError) as exc:  # a last guard: the reading above avoids both
        raise ProposalError(_missing_message(
            names, f"the answer could not be read ({type(exc).__name__}); answer with just the two lines")) from None


def _parse(text: str, names: list[str]) -> Proposal:
    body = _strip_think(text)
    lines = body.splitlines()
    offsets = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1

    candidates = _line_candidates(lines, offsets) + _json_candidates(body)
    if not candidates:
        raise ProposalError(_missing_message(names, "no 'Weights:' line with numbers was found"))
    candidates.sort(key=lambda c: c.pos)
    chosen = candidates[-1]
    if chosen.error:
        raise ProposalError(chosen.error + ". " + _format_hint(names))
    weights = _resolve(chosen, names)
    thoughts = chosen.thoughts
    if thoughts is None:
        thoughts = _find_thoughts(lines, offsets, chosen, look_before=len(candidates) == 1)
    if thoughts is not None:
        thoughts = thoughts.strip()[:MAX_THOUGHTS_CHARS] or None
    return Proposal(weights=weights, thoughts=thoughts, format="json" if chosen.kind == "json" else "line")


def proposal_grammar(
    loss_names: Sequence[str],
    *,
    max_int_digits: int = 3,
    max_frac_digits: int = 6,
    max_thought_chars: int = 200,
) -> str:
    """A GBNF grammar (llama.cpp syntax) that admits exactly the two-line answer.

    ``Weights: name1:name2:...=num:num:...`` (the names written out, in order), a newline,
    ``Thoughts: `` and 1..``max_thought_chars`` printable ASCII characters, then an optional
    newline. Numbers are non-negative decimals with at most ``max_int_digits`` digits before the
    point and ``max_frac_digits`` after it. Everything is bounded, so a constrained model must
    stop; the thoughts are ASCII so that every token is at least one character and the answer's
    length in tokens is bounded by its length in characters. (All-zero weights still parse
    structurally; ``parse_proposal`` rejects them and the agent asks again.)

    Example:
        >>> print(proposal_grammar(["l1", "gan"], max_thought_chars=50))
        # agentloss proposal: a Weights line and a Thoughts line, nothing else
        root ::= "Weights: l1:gan=" num ":" num "\\n" "Thoughts: " thought "\\n"?
        num ::= [0-9]{1,3} ("." [0-9]{1,6})?
        thought ::= [ -~]{1,50}
        <BLANKLINE>
    """
    names = [str(n) for n in loss_names]
    if not names:
        raise ValueError("loss_names is empty")
    for label, v in (("max_int_digits", max_int_digits), ("max_frac_digits", max_frac_digits),
                     ("max_thought_chars", max_thought_chars)):
        if int(v) < 1:
            raise ValueError(f"{label} must be >= 1, got {v}")
    header = _gbnf_literal("Weights: " + ":".join(names) + "=")
    nums = ' ":" '.join(["num"] * len(names))
    return (
        "# agentloss proposal: a Weights line and a Thoughts line, nothing else\n"
        f'root ::= {header} {nums} "\\n" "Thoughts: " thought "\\n"?\n'
        f'num ::= [0-9]{{1,{int(max_int_digits)}}} ("." [0-9]{{1,{int(max_frac_digits)}}})?\n'
        f"thought ::= [ -~]{{1,{int(max_thought_chars)}}}\n"
    )


def _gbnf_literal(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{out}"'


# ---------------------------------------------------------------------------------------------
# Candidates


def _line_candidates(lines: list[str], offsets: list[int]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for i, raw in enumerate(lines):
        if _FENCE_RE.match(raw):
            continue
        line = _clean(raw)
        m = _WEIGHTS_LABEL_RE.match(line)
        if not m:
            continue
        body = m.group("body").strip()
        end = i
        if not body:
            body, end = _continuation(lines, i)
        if not re.search(r"\d|\bnan\b|\binf", body, re.IGNORECASE):
            continue  # "Weights: see below" and the like are prose, not answers
        if body.startswith("{"):
            continue  # a JSON object on the line: the JSON scanner reads it
        cand = _read_line_body(body, m.group("paren"))
        cand.pos = offsets[i]
        cand.end_line = end
        out.append(cand)
    return out


def _continuation(lines: list[str], i: int) -> tuple[str, int]:
    """``Weights:`` alone on its line: the weights follow on the next lines (a list, or the line)."""
    parts: list[str] = []
    end = i
    for j in range(i + 1, min(len(lines), i + 40)):
        raw = lines[j]
        if _FENCE_RE.match(raw):
            if parts:
                break
            continue
        line = _clean(raw)
        if not line:
            if parts:
                break
            continue
        if _THOUGHTS_LABEL_RE.match(line) or _WEIGHTS_LABEL_RE.match(line):
            break
        parts.append(re.sub(_LEAD, "", line))
        end = j
    return ", ".join(parts), end


def _read_line_body(body: str, paren: str | None) -> _Candidate:
    thoughts = None
    # ``$`` is the end or just before a final newline, so a match can only start on the last line:
    # searching only there keeps a JSON string holding many "thoughts:" lines linear.
    stem = body.removesuffix("\n")
    tm = _INLINE_THOUGHTS_RE.search(body, stem.rfind("\n") + 1)
    if tm:
        thoughts = tm.group("body").strip()
        body = body[: tm.start()].strip()
    matches: list[tuple[int, str, re.Match[str]]] = []
    for kind, rx in (("paper", _PAPER_RE), ("pairs", _PAIRS_RE), ("values", _VALUES_RE)):
        mm = rx.match(body)
        if mm:
            matches.append((mm.end(), kind, mm))
    if not matches:
        return _Candidate(0, "line", None, None, thoughts,
                          f"could not read weights from the Weights line '{_short(body)}'")
    # The reading that explains most of the line wins ("l1=0.7, gan=0.1" reads as pairs, not as
    # a one-name paper line followed by junk); ties go to the paper's notation.
    order = {"paper": 0, "pairs": 1, "values": 2}
    _, kind, mm = max(matches, key=lambda t: (t[0], -order[t[1]]))
    if kind == "paper":
        written = re.split(_SEP, mm.group("names").strip())
        values = re.split(_SEP, mm.group("vals").strip())
        if len(written) != len(values):
            return _Candidate(0, "line", None, None, thoughts,
                              f"the Weights line names {len(written)} loss term(s) "
                              f"({_listing(written, quote=False)}) but gives {len(values)} value(s)")
        return _Candidate(0, "line", _pairs_to_dict(list(zip(written, values))), None, thoughts, None)
    if kind == "pairs":
        pairs = [(p.group("name"), p.group("val")) for p in _PAIR_RE.finditer(mm.group(0))]
        return _Candidate(0, "line", _pairs_to_dict(pairs), None, thoughts, None)
    values = re.split(_SEP, mm.group("vals").strip())
    if paren and re.fullmatch(rf"\s*{_NAME}(?:{_SEP}{_NAME})*\s*", paren):
        written = re.split(_SEP, paren.strip())
        if len(written) != len(values):
            return _Candidate(0, "line", None, None, thoughts,
                              f"the Weights line names {len(written)} loss term(s) "
                              f"({_listing(written, quote=False)}) but gives {len(values)} value(s)")
        return _Candidate(0, "line", _pairs_to_dict(list(zip(written, values))), None, thoughts, None)
    return _Candidate(0, "line", None, values, thoughts, None)


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keep duplicates visible: a name written again gets a unique key ending in ``#2`` so it is
    reported (built in one step: appending ``#2`` until unique was cubic in the repeats)."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        out[name if name not in out else f"{name}#{len(out)}#2"] = value
    return out


# Where a JSON answer may start: an object with a key (``{}`` or ``{1`` never is one).
_JSON_START_RE = re.compile(r'\{\s*"')
_JSON_WEIGHTS_KEY_RE = re.compile(r'\{\s*"(?:weights?|loss_weights|next_weights|new_weights)"\s*:', re.IGNORECASE)
# A bracket, a whole JSON string (no raw control characters, as the strict decoder wants; unrolled
# so that it matches or fails in one pass), or a quote that opens no valid string.
_JSON_TOKEN_RE = re.compile(r'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"|[{}\[\]"]')


def _json_int(digits: str) -> int | float:
    # Long integers as floats: 400 digits overflow to inf (rejected as not finite) instead of an
    # int that float() cannot convert, and 5000 digits never reach int()'s digit limit.
    return int(digits) if len(digits) <= 18 else float(digits)


_DECODER = json.JSONDecoder(parse_int=_json_int)


def _json_candidates(text: str) -> list[_Candidate]:
    """Every JSON object in the text that reads as an answer, tried at each ``{"`` left to right
    (what is inside a decoded object is part of it).

    Only the span from ``{"`` to its closing brace is decoded, found beforehand by ``_json_spans``:
    decoding from ``{"`` in the whole text made every failure cost a pass over the text before it
    (the decoder's error counts lines), and deep nesting raised RecursionError.
    """
    out: list[_Candidate] = []
    spans: dict[int, tuple[int, bool] | None] = {}
    budget = [4 * sum(text.count(c) for c in '"{}[]') + 1000]
    start = _JSON_START_RE.search(text)
    while start is not None:
        i = start.start()
        if i not in spans:
            _json_spans(text, i, spans, budget)
        span = spans[i]
        if span is None:  # never closes: not JSON from here
            start = _JSON_START_RE.search(text, i + 1)
            continue
        end, too_deep = span
        if too_deep:
            if _JSON_WEIGHTS_KEY_RE.match(text, i):
                out.append(_Candidate(i, "json", None, None, None,
                                      f"the JSON answer is nested more than {MAX_JSON_DEPTH} levels deep"))
            start = _JSON_START_RE.search(text, end)
            continue
        try:
            obj = _DECODER.raw_decode(text[i:end])[0]
        except ValueError:
            start = _JSON_START_RE.search(text, i + 1)
            continue
        if isinstance(obj, dict):
            cand = _json_candidate(obj)
            if cand is not None:
                cand.pos = i
                out.append(cand)
        start = _JSON_START_RE.search(text, end)
    return out


def _json_spans(text: str, i: int, spans: dict[int, tuple[int, bool] | None], budget: list[int]) -> None:
    """Match brackets from the ``{`` at ``i`` until it closes, skipping strings, and record in ``spans``
    each bracket met on the way: ``(end, nested deeper than MAX_JSON_DEPTH)``, or None when it never
    closes (the text ends, or a quote starts no valid string).

    A ``{`` met here is not scanned again, so the scans together pass over each part of the text
    about once per reading of its quotes (inside a string or not). The budget caps them anyway:
    an answer needing more (thousands of crossing quotes and braces) is rejected.
    """
    stack: list[list[int]] = []  # [position, deepest level reached inside], level = index + 1
    pos = i
    while (m := _JSON_TOKEN_RE.search(text, pos)) is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ProposalError("the answer holds too many unbalanced quotes, braces and brackets to read; answer "
                                "with just the two lines, without JSON")
        at, pos = m.start(), m.end()
        ch = text[at]
        if ch == '"':
            if pos - at == 1:
                break  # a quote that starts no valid string: nothing open here closes validly
        elif ch in "{[":
            stack.append([at, len(stack) + 1])
        else:
            opened, deepest = stack.pop()
            spans[opened] = (pos, deepest - len(stack) > MAX_JSON_DEPTH)
            if not stack:
                return
            stack[-1][1] = max(stack[-1][1], deepest)
    for opened, _ in stack:
        spans[opened] = None


_THOUGHT_KEYS = ("thoughts", "thought", "reasoning", "reason", "rationale", "explanation")


def _json_candidate(obj: dict[str, Any]) -> _Candidate | None:
    lower = {str(k).lower(): v for k, v in obj.items()}
    thoughts = None
    for key in _THOUGHT_KEYS:
        if isinstance(lower.get(key), str):
            thoughts = lower[key]
            break
    for key in ("weights", "weight", "loss_weights", "next_weights", "new_weights"):
        if key in lower:
            w = lower[key]
            if isinstance(w, dict):
                return _Candidate(0, "json", {str(k): v for k, v in w.items()}, None, thoughts, None)
            if isinstance(w, list):
                return _Candidate(0, "json", None, list(w), thoughts, None)
            if isinstance(w, str):
                inner = _read_line_body(w, None)
                inner.kind = "json"
                inner.thoughts = inner.thoughts or thoughts
                return inner
            return _Candidate(0, "json", None, None, thoughts,
                              f"the JSON 'weights' value must be an object of name: number, got {_short(repr(w))}")
    flat = {str(k): v for k, v in obj.items() if str(k).lower() not in _THOUGHT_KEYS}
    if flat and all(_is_number_like(v) for v in flat.values()):
        return _Candidate(0, "json", flat, None, thoughts, None)
    return None  # some other JSON object: not an answer


def _is_number_like(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, str) and bool(_NUM_RE.fullmatch(v.strip()))


# ---------------------------------------------------------------------------------------------
# Resolution and validation


def _resolve(c: _Candidate, names: list[str]) -> dict[str, float]:
    by_lower = {n.lower(): n for n in names}
    raw: dict[str, Any] = {}
    if c.values is not None:
        if len(c.values) != len(names):
            raise ProposalError(
                f"the answer gives {len(c.values)} value(s) without names, but there are {len(names)} "
                f"loss terms ({', '.join(names)}); give one value per term. " + _format_hint(names)
            )
        raw = dict(zip(names, c.values))
    else:
        assert c.weights is not None
        unknown: list[str] = []
        dupes: list[str] = []
        for written, value in c.weights.items():
            base = written.split("#", 1)[0]
            key = by_lower.get(base.strip().lower())
            if key is None:
                unknown.append(base)
            elif key in raw or written.endswith("#2"):
                dupes.append(base)
            else:
                raw[key] = value
        if dupes:
            raise ProposalError(
                f"the loss term(s) {_listing(dupes)} are given more than once; give each "
                f"term exactly once. " + _format_hint(names)
            )
        if unknown:
            raise ProposalError(
                f"unknown loss term(s) {_listing(unknown)}; the loss terms are exactly "
                f"{', '.join(names)}. " + _format_hint(names)
            )
        missing = [n for n in names if n not in raw]
        if missing:
            raise ProposalError(
                f"no weight for {', '.join(repr(m) for m in missing)}; give a weight for every one of "
                f"{', '.join(names)} (0 to switch a term off). " + _format_hint(names)
            )
    values: dict[str, float] = {}
    for name in names:
        values[name] = _to_float(name, raw[name])
    if not any(v > 0 for v in values.values()):
        raise ProposalError(
            "all weights are 0, which would train nothing; give at least one term a positive weight. "
            + _format_hint(names)
        )
    try:
        return validate_weights(values, names)
    except WeightError as exc:  # pragma: no cover - the checks above cover every case
        raise ProposalError(str(exc)) from None


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise ProposalError(f"the weight for {name!r} is not a number ({value!r}); write a decimal like 0.05")
    try:
        v = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # an int beyond any float
        raise ProposalError(f"the weight for {name!r} is far too large; write a decimal like 0.05") from None
    except (TypeError, ValueError):
        raise ProposalError(
            f"the weight for {name!r} is not a number ({_short(repr(value), 40)}); write a decimal like 0.05"
        ) from None
    if not math.isfinite(v):
        raise ProposalError(f"the weight for {name!r} is not a finite number ({value}); write a decimal like 0.05")
    if v < 0:
        raise ProposalError(f"the weight for {name!r} is negative ({_num_text(value)}); every weight must be 0 or more")
    return v


def _num_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else f"{value:g}"


def _find_thoughts(lines: list[str], offsets: list[int], chosen: _Candidate, look_before: bool) -> str | None:
    """The Thoughts after the chosen answer; else, when it is the only answer in the text, the last
    Thoughts before it (a Thoughts line after an earlier answer, e.g. a restated example, belongs
    to that one). The text runs to a blank line, a fence, or the next labelled line."""
    start_line = next((i for i, off in enumerate(offsets) if off >= chosen.pos), len(lines))
    after_from = chosen.end_line + 1 if chosen.kind == "line" and chosen.end_line >= 0 else start_line
    found_before: int | None = None
    found_after: int | None = None
    for i, raw in enumerate(lines):
        if _THOUGHTS_LABEL_RE.match(_clean(raw)):
            if i >= after_from and found_after is None:
                found_after = i
            elif i < start_line and look_before:
                found_before = i
    idx = found_after if found_after is not None else found_before
    if idx is None:
        return None
    m = _THOUGHTS_LABEL_RE.match(_clean(lines[idx]))
    assert m is not None
    parts = [m.group("body")]
    for raw in lines[idx + 1:]:
        if _FENCE_RE.match(raw):
            break
        line = _clean(raw)
        if not line or _WEIGHTS_LABEL_RE.match(line) or _THOUGHTS_LABEL_RE.match(line) or line.startswith("{"):
            break
        parts.append(line)
    return "\n".join(parts).strip() or None


def _listing(items: Sequence[str], *, quote: bool = True, most: int = 8) -> str:
    """A few of ``items`` for a message (an answer may repeat a name thousands of times)."""
    shown = [_short(repr(x) if quote else x, 40) for x in items[:most]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest > 0 else "")


def _format_hint(names: Sequence[str]) -> str:
    return "Answer with the line: Weights: " + ":".join(names) + "=" + ":".join("<number>" for _ in names)


def _missing_message(names: Sequence[str], what: str) -> str:
    return f"{what}. " + _format_hint(names) + ", then a line starting with 'Thoughts:'"
