"""The answer parser under hostile input: it returns a Proposal or raises ProposalError, quickly, always.

A seeded generator mixes what models really write (Weights lines, JSON, ``<think>`` blocks, markdown)
with what broke the parser before: markdown rules of ``-``/``#``/``+---+``, runs of ``_`` and spaces,
unclosed braces and think tags, huge numbers, deep nesting, unicode and long lines. Times are CPU
times of the calling thread, so a busy machine does not fail the bound; the wall-clock figures are
printed for the record (``pytest -s``).
"""

from __future__ import annotations

import random
import statistics
import time

import pytest

from agentloss.proposal import MAX_ANSWER_CHARS, Proposal, ProposalError, parse_proposal

NAMES = ["l1", "perceptual", "gan"]
N_STRINGS = 10_000
CALL_CPU_LIMIT = 0.05  # seconds: the target for any answer up to the generation limit
GENERATION_LIMIT_CHARS = 16_000  # 4096 tokens of ~4 characters: more than any agent asks for

VALID = [
    "Weights: l1:perceptual:gan=0.7:0.3:0.05",
    "**Weights:** L1:Perceptual:GAN = 0.7 : 0.3 : 5e-2",
    "- Proposed weights: l1=0.7, perceptual=0.3, gan=0.05",
    "Weights: 0.7:0.3:0.05\nThoughts: keep going",
    "New weights:\n- L1: 0.7\n- Perceptual: 0.3\n- GAN: 0.05",
    '{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}, "thoughts": "json"}',
    '```json\n{"l1": 0.7, "perceptual": 0.3, "gan": 0.05}\n```',
    "Weights (l1:perceptual:gan): 1:0:0.001",
    "_Weights:_ pixel_l1:gan_loss=1:0.01",
]
UNICODE = "é漢字🙂\u200b\u00a0\u2028\u202e\u0301０．７ΣЖ\U0001d7d9٣\ufeff\x00\x1f\x7f"


def _run(rng: random.Random, chars: str, big: bool) -> str:
    n = rng.choice([1, 2, 5, 16, 24, 31, 40, 64, 200]) if not big else rng.randint(500, 4000)
    return chars * n


def random_answer(rng: random.Random, big: bool = False) -> str:
    """One answer: 1-7 pieces, each a valid answer, a run, a tag, JSON debris or noise."""
    pieces: list[str] = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.randrange(16)
        if kind == 0:
            pieces.append(rng.choice(VALID))
        elif kind == 1:  # markdown rules and list marks, the catastrophic-backtracking inputs
            pieces.append(_run(rng, rng.choice(["-", "#", "+---", "+", "=", "*", "_", "- ", "# ", ">", "1.", "•"]), big))
        elif kind == 2:
            pieces.append(rng.choice(["a", "l1", "x."]) + _run(rng, "_", big) + rng.choice(["b", "", " "]))
        elif kind == 3:
            pieces.append(_run(rng, rng.choice(["<think>", "<thinking>", "</think>", "<think>x</think>"]), big))
        elif kind == 4:  # braces, quotes and brackets that never close, or close wrongly
            pieces.append(_run(rng, rng.choice(["{", '{"', '{"a":', '{"a":[', "}", "[", '"', '\\"', '{"a": 1,}']), big))
        elif kind == 5:  # huge numbers
            digits = "9" * rng.choice([20, 309, 400, 5000])
            pieces.append(rng.choice([f"Weights: l1:perceptual:gan={digits}:1:1", f"Weights: -{digits}:0.1:0.1",
                                      '{"l1": ' + digits + ', "perceptual": 1, "gan": 1}', f"Weights: 1e{digits[:4]}:1:1"]))
        elif kind == 6:  # deep nesting
            depth = rng.choice([5, 9, 100, 1000, 3000])
            pieces.append(rng.choice(['{"weights": ' + "[" * depth + "0.5" + "]" * depth + "}",
                                      '{"a":' * depth + "1" + "}" * depth, "[" * depth]))
        elif kind == 7:
            pieces.append("".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 80))))
        elif kind == 8:  # a long line of words
            pieces.append(" ".join(rng.choice(["weights", "Weights:", "thoughts:", "and", "l1", "=", "0.5", ":", ",",
                                               "gan", "loss", "new", "1)", "-"]) for _ in range(rng.randint(10, 600))))
        elif kind == 9:
            pieces.append(_run(rng, " ", big) + rng.choice(["!", "x", ""]))
        elif kind == 10:  # a Weights line with a hostile body
            pieces.append("Weights: " + rng.choice(["l1=1", "l1:", "0.5", "a:", "l1=1 and "]) + _run(rng, rng.choice(
                [" ", "1", "a", ":", "l1=1, ", "(", "."]), big) + rng.choice(["", "!", "=1", ":1"]))
        elif kind == 11:
            pieces.append(rng.choice(["Thoughts: because", "Reasoning: x", "thoughts:" * 50, "```", "~~~json"]))
        elif kind == 12:
            pieces.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(1, 300))))
        elif kind == 13:
            pieces.append("Weights: " + ", ".join(f"{rng.choice(NAMES + ['vgg', 'L1'])}={rng.random():.3f}"
                                                  for _ in range(rng.randint(1, 400 if big else 8))))
        elif kind == 14:
            pieces.append('{"weights": "' + rng.choice(["l1:perceptual:gan=1:1:1", "thoughts:" * 200 + "\\nx"]) + '"}')
        else:
            pieces.append(rng.choice(["Weights:", "Weights: see below", "Current weights: 1:1:1", "", "\n" * 5]))
    return "".join(p + rng.choice(["\n", " ", "", "\n\n", "\r\n"]) for p in pieces)


def _timed(text: str, limit: float) -> tuple[float, float, str]:
    """``_call``, and when it is over ``limit`` twice more, keeping the fastest: a shared machine can
    stall any one call (another process, a page fault), but a slow reading is slow every time."""
    best = _call(text)
    for _ in range(2):
        if best[0] < limit:
            break
        best = min(best, _call(text))
    return best


def _call(text: str) -> tuple[float, float, str]:
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        outcome = "ok" if isinstance(parse_proposal(text, NAMES), Proposal) else "?"
    except ProposalError as exc:
        assert str(exc), "a ProposalError must say why"
        outcome = "rejected"
    return time.thread_time() - cpu, time.perf_counter() - wall, outcome


def test_fuzz_10000_answers_return_or_reject_quickly():
    rng = random.Random(20240611)
    cpu_times: list[float] = []
    worst = (0.0, "")
    worst_within_limit = 0.0
    outcomes = {"ok": 0, "rejected": 0}
    wall_max = 0.0
    for i in range(N_STRINGS):
        text = random_answer(rng, big=i % 10 == 0)
        limit = CALL_CPU_LIMIT if len(text) <= GENERATION_LIMIT_CHARS else 1.0
        cpu, wall, outcome = _timed(text, limit)  # anything but a Proposal or ProposalError propagates
        outcomes[outcome] += 1
        cpu_times.append(cpu)
        wall_max = max(wall_max, wall)
        if cpu > worst[0]:
            worst = (cpu, text)
        if len(text) <= GENERATION_LIMIT_CHARS:
            worst_within_limit = max(worst_within_limit, cpu)
        assert cpu < limit, f"{cpu * 1000:.1f} ms CPU for a {len(text)}-char answer: {text[:200]!r}"
    cpu_times.sort()
    p99 = cpu_times[int(0.99 * len(cpu_times))]
    print(f"\nfuzz: {N_STRINGS} answers, {outcomes['ok']} read, {outcomes['rejected']} rejected; CPU per call: "
          f"max {worst_within_limit * 1000:.2f} ms up to {GENERATION_LIMIT_CHARS} chars, max {worst[0] * 1000:.2f} ms "
          f"overall ({len(worst[1])} chars), p99 {p99 * 1000:.2f} ms, median {statistics.median(cpu_times) * 1000:.3f} "
          f"ms; wall max {wall_max * 1000:.1f} ms")
    assert outcomes["ok"] > 100 and outcomes["rejected"] > 100  # the generator exercises both ends


# ------------------------------------------------------------------ the inputs the issue names


def _rule_then_answer(rule: str) -> str:
    return rule + "\nWeights: l1:perceptual:gan=0.7:0.3:0.05"


PATHOLOGICAL = {
    # markdown rules before a valid answer: exponential in the rule's length before the fix
    "24 dashes": _rule_then_answer("-" * 24),
    "40 dashes": _rule_then_answer("-" * 40),
    "40 hashes": _rule_then_answer("#" * 40),
    "table rule": _rule_then_answer("+---" * 20 + "+"),
    "list of dashes": _rule_then_answer("- " * 40),
    # long runs, quadratic before the fix (sized to the generation limit and to the cap)
    "braces 16k": "{" * GENERATION_LIMIT_CHARS,
    "think tags 16k": "<think>" * (GENERATION_LIMIT_CHARS // 7),
    "underscores 16k": "a" + "_" * GENERATION_LIMIT_CHARS + "b",
    "spaces after pairs 16k": "Weights: l1=1" + " " * GENERATION_LIMIT_CHARS + "!",
    "repeated name 16k": "Weights: " + ", ".join(["l1=1"] * (GENERATION_LIMIT_CHARS // 6)),
    "braces at the cap": "{" * MAX_ANSWER_CHARS,
    "think tags at the cap": "<think>" * (MAX_ANSWER_CHARS // 7),
    "quote-braces at the cap": '{"' * (MAX_ANSWER_CHARS // 2),
    "dashes at the cap": _rule_then_answer("-" * (MAX_ANSWER_CHARS - 60)),
    # 1 MB: over the cap, rejected unread
    "braces 1 MB": "{" * 1_000_000,
    "think tags 1 MB": "<think>" * 150_000,
    "underscores 1 MB": "a" + "_" * 1_000_000 + "b",
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_answers_are_fast(name):
    text = PATHOLOGICAL[name]
    limit = CALL_CPU_LIMIT if len(text) <= GENERATION_LIMIT_CHARS + 100 else 1.0
    cpu, _, _ = _timed(text, limit)
    assert cpu < limit, f"{name}: {cpu * 1000:.1f} ms CPU"


def test_rules_do_not_hide_the_answer():
    for rule in ("-" * 40, "#" * 40, "+---" * 20 + "+", "=" * 40, "- " * 40):
        p = parse_proposal(_rule_then_answer(rule) + "\nThoughts: after a rule", NAMES)
        assert p.weights == pytest.approx({"l1": 0.7, "perceptual": 0.3, "gan": 0.05})
        assert p.thoughts == "after a rule"


def test_an_over_long_answer_is_rejected_saying_so():
    text = "x" * MAX_ANSWER_CHARS + "\nWeights: l1:perceptual:gan=0.7:0.3:0.05"
    with pytest.raises(ProposalError, match=rf"{len(text)} characters long and was not read.*limit is "
                                            rf"{MAX_ANSWER_CHARS}.*just the two lines"):
        parse_proposal(text, NAMES)


@pytest.mark.parametrize("text, message", [
    ('{"l1": 1' + "0" * 400 + ', "perceptual": 1, "gan": 1}', "'l1' is not a finite number"),
    ('{"weights": {"l1": 1' + "0" * 5000 + ', "perceptual": 1, "gan": 1}}', "'l1' is not a finite number"),
    ("Weights: l1:perceptual:gan=1" + "0" * 400 + ":1:1", "'l1' is not a finite number"),
    ('{"weights": ' + "[" * 1000 + "]" * 1000 + "}", "JSON answer is nested more than 64 levels deep"),
    ('{"a":' * 3000 + "1" + "}" * 3000, "no 'Weights:' line"),
    ("Weights: " + ", ".join(f"x{i}=1" for i in range(3000)), r"unknown loss term.*'x7' and 2992 more"),
    ('"\\"{"' * 3000, "too many unbalanced quotes"),
])
def test_overflow_and_deep_nesting_are_proposal_errors(text, message):
    """Before: OverflowError and RecursionError escaped, and the agent skipped its retries."""
    with pytest.raises(ProposalError, match=message):
        parse_proposal(text, NAMES)


def test_deep_json_beside_an_answer_does_not_hide_it():
    text = '{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}, "trace": ' + "[" * 50 + "]" * 50 + "}"
    assert parse_proposal(text, NAMES).weights == pytest.approx({"l1": 0.7, "perceptual": 0.3, "gan": 0.05})
