"""Reading model answers: the paper's Weights line as real models write it, JSON, rejections, grammar."""

from __future__ import annotations

import re

import pytest

from agentloss.proposal import Proposal, ProposalError, format_weights, parse_proposal, proposal_grammar

NAMES = ["l1", "perceptual", "gan"]
EXPECTED = {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}


# ------------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    "text",
    [
        "Weights: L1:Perceptual:GAN=0.7:0.3:0.05\nThoughts: NIQE fell, keep going.",
        "Weights: l1:perceptual:gan=0.7:0.3:0.05",
        # prose around, markdown emphasis
        ("Looking at the history, NIQE improves while PSNR drops slowly.\n\n"
         "**Weights:** L1:Perceptual:GAN = 0.7 : 0.3 : 0.05\n\n**Thoughts:** keep the balance."),
        "**Weights**: `l1:perceptual:gan=0.7:0.3:0.05`.",
        "_Weights:_ l1 : perceptual : gan = 0.7 : 0.3 : 0.05",
        "### Final weights: l1:perceptual:gan=0.7:0.3:0.05",
        "- Proposed weights: l1:perceptual:gan=0.7:0.3:0.05",
        # code fences
        "```\nWeights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: x\n```",
        "```text\nWeights: l1:perceptual:gan=0.7:0.3:0.05\n```\nThat is my answer.",
        # names in another order, mixed case
        "Weights: GAN:L1:PERCEPTUAL=0.05:0.7:0.3",
        # no names, count matches
        "Weights: 0.7:0.3:0.05",
        "Weights: 0.7 : 0.3 : 0.05",
        # scientific notation, ints
        "Weights: l1:perceptual:gan=7e-1:3E-1:5e-2",
        # name=value pairs, and the line broken after the label
        "Weights: L1=0.7, Perceptual=0.3, GAN=0.05",
        "Weights: l1: 0.7; perceptual: 0.3; gan: 0.05",
        "New weights:\n- L1: 0.7\n- Perceptual: 0.3\n- GAN: 0.05\n\nThoughts: list form",
        "Weights:\nl1:perceptual:gan=0.7:0.3:0.05\nThoughts: on the next line",
        "Weights (L1:Perceptual:GAN): 0.7:0.3:0.05",
        # reasoning models: the think block is ignored
        "<think>Maybe Weights: l1:perceptual:gan=9:9:9</think>\nWeights: l1:perceptual:gan=0.7:0.3:0.05",
        # JSON
        '{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}, "thoughts": "json"}',
        '```json\n{"weights": {"L1": 0.7, "Perceptual": 0.3, "GAN": 0.05},\n "thoughts": "fenced"}\n```',
        '{"l1": 0.7, "perceptual": 0.3, "gan": 0.05}',
        'Here you go:\n{"gan": "0.05", "l1": 0.7, "perceptual": 3e-1, "thoughts": "flat"}',
        '{"weights": [0.7, 0.3, 0.05]}',
        'Weights: {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}',
    ],
)
def test_accepts_real_model_answers(text):
    p = parse_proposal(text, NAMES)
    assert isinstance(p, Proposal)
    assert p.weights == pytest.approx(EXPECTED)
    assert list(p.weights) == NAMES  # always in loss_names order


def test_ints_and_order():
    p = parse_proposal("Weights: gan:l1:perceptual=0:1:2", NAMES)
    assert p.weights == {"l1": 1.0, "perceptual": 2.0, "gan": 0.0}
    assert list(p.weights) == NAMES


def test_thoughts_and_format():
    p = parse_proposal("Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: raise GAN a bit.", NAMES)
    assert (p.thoughts, p.format) == ("raise GAN a bit.", "line")
    p = parse_proposal("Weights: l1:perceptual:gan=0.7:0.3:0.05 Thoughts: same line", NAMES)
    assert p.thoughts == "same line"
    p = parse_proposal("Thoughts: thought first\nWeights: l1:perceptual:gan=0.7:0.3:0.05", NAMES)
    assert p.thoughts == "thought first"
    p = parse_proposal('{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": 0.05}, "thoughts": "j"}', NAMES)
    assert (p.thoughts, p.format) == ("j", "json")
    p = parse_proposal("Weights: 0.7:0.3:0.05", NAMES)
    assert p.thoughts is None
    p = parse_proposal("Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: line one\nline two\n```", NAMES)
    assert p.thoughts == "line one\nline two"


def test_last_answer_wins_over_a_restated_example():
    text = (
        "The required format is:\n"
        "Weights: l1:perceptual:gan=0.5:0.2:0.05\n"
        "Thoughts: A one-sentence reason for these weights.\n\n"
        "My answer:\n"
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\n"
        "Thoughts: the real one."
    )
    p = parse_proposal(text, NAMES)
    assert p.weights == pytest.approx(EXPECTED)
    assert p.thoughts == "the real one."
    # The example's thoughts are not taken for an answer that has none of its own.
    p = parse_proposal(text.rsplit("\n", 1)[0], NAMES)
    assert p.thoughts is None


def test_a_broken_last_answer_is_rejected_not_replaced_by_an_earlier_one():
    text = "Weights: l1:perceptual:gan=0.5:0.2:0.05\nActually:\nWeights: l1:perceptual=0.7:0.3"
    with pytest.raises(ProposalError, match="no weight for 'gan'"):
        parse_proposal(text, NAMES)


def test_json_after_a_line_wins_and_vice_versa():
    line_then_json = 'Weights: l1:perceptual:gan=1:1:1\n{"l1": 0.7, "perceptual": 0.3, "gan": 0.05}'
    assert parse_proposal(line_then_json, NAMES).format == "json"
    json_then_line = '{"l1": 1, "perceptual": 1, "gan": 1}\nWeights: l1:perceptual:gan=0.7:0.3:0.05'
    p = parse_proposal(json_then_line, NAMES)
    assert p.format == "line" and p.weights == pytest.approx(EXPECTED)


def test_prose_lines_about_other_weights_are_not_answers():
    text = ("Current weights: l1:perceptual:gan=1:0.1:0.01\nPrevious weights: 1:1:1\n"
            "Weights: l1:perceptual:gan=0.7:0.3:0.05")
    assert parse_proposal(text, NAMES).weights == pytest.approx(EXPECTED)
    with pytest.raises(ProposalError, match="no 'Weights:' line"):
        parse_proposal("Current weights: l1:perceptual:gan=1:0.1:0.01", NAMES)
    # A label without numbers is prose, not an answer.
    assert parse_proposal("Weights: l1:perceptual:gan=0.7:0.3:0.05\nWeights: unchanged otherwise", NAMES).weights


def test_unrelated_json_is_ignored():
    text = 'Scores were {"niqe": "lower"}.\nWeights: l1:perceptual:gan=0.7:0.3:0.05'
    assert parse_proposal(text, NAMES).weights == pytest.approx(EXPECTED)


def test_names_with_underscores_survive_markdown_cleanup():
    p = parse_proposal("**Weights:** pixel_l1:gan_loss=1:0.01", ["pixel_l1", "gan_loss"])
    assert p.weights == {"pixel_l1": 1.0, "gan_loss": 0.01}


# ------------------------------------------------------------------------------------- rejected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("I would increase the GAN weight a little.", "no 'Weights:' line"),
        ("Weights: see below", "no 'Weights:' line"),
        ("Weights: l1:perceptual:gan=0.7:0.3", "names 3 loss term.*gives 2 value"),
        ("Weights: l1:perceptual=0.7:0.3", "no weight for 'gan'"),
        ("Weights: 0.7:0.3", "2 value.*without names.*3 loss terms"),
        ("Weights: 0.7:0.3:0.05:0.1", "4 value.*without names"),
        ("Weights: l1:vgg:gan=0.7:0.3:0.05", "unknown loss term.*'vgg'.*l1, perceptual, gan"),
        ("Weights: l1:l1:gan=0.7:0.3:0.05", "'l1'.*more than once"),
        ("Weights: l1:perceptual:gan=0.7:-0.3:0.05", "'perceptual' is negative"),
        ("Weights: l1:perceptual:gan=nan:0.3:0.05", "'l1' is not a finite number"),
        ("Weights: l1:perceptual:gan=0.7:inf:0.05", "'perceptual' is not a finite number"),
        ("Weights: l1:perceptual:gan=0:0:0", "all weights are 0"),
        ("Weights: l1:perceptual:gan=high:low:mid", "could not read weights|no 'Weights:' line"),
        ('{"weights": {"l1": 0.7, "perceptual": 0.3}}', "no weight for 'gan'"),
        ('{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": NaN}}', "'gan' is not a finite number"),
        ('{"weights": {"l1": true, "perceptual": 0.3, "gan": 0.1}}', "'l1' is not a number"),
        ('{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": null}}', "'gan' is not a number"),
        ('{"weights": {"l1": 0.7, "perceptual": 0.3, "gan": 0.1, "tv": 1}}', "unknown loss term.*'tv'"),
        ('{"weights": 5}', "JSON 'weights' value"),
    ],
)
def test_rejects_with_a_message_naming_the_problem(text, message):
    with pytest.raises(ProposalError, match=message):
        parse_proposal(text, NAMES)


def test_error_messages_show_the_format_to_use():
    with pytest.raises(ProposalError) as info:
        parse_proposal("Weights: 0.7:0.3", NAMES)
    assert "Weights: l1:perceptual:gan=<number>:<number>:<number>" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_format_weights_round_trips():
    w = {"l1": 1.0, "perceptual": 0.333333, "gan": 1e-5}
    text = "Weights: " + format_weights(w)
    assert "e" not in text.split("=")[1]  # plain decimals, as the format asks
    assert parse_proposal(text, NAMES).weights == pytest.approx(w)


# ------------------------------------------------------------------------------------- grammar


def gbnf_to_regex(grammar: str) -> re.Pattern[str]:
    """Translate the (non-recursive) GBNF subset proposal_grammar uses into a Python regex."""
    rules: dict[str, str] = {}
    for line in grammar.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, body = line.split("::=", 1)
        rules[name.strip()] = body.strip()
    token_re = re.compile(r'"((?:[^"\\]|\\.)*)"|(\[(?:[^\]\\]|\\.)*\])|([A-Za-z][\w-]*)|(\{\d+(?:,\d*)?\})|([()|?*+])|(\s+)')

    def convert(name: str, depth: int = 0) -> str:
        assert depth < 20, "recursive grammar"
        out, pos, body = [], 0, rules[name]
        while pos < len(body):
            m = token_re.match(body, pos)
            assert m, f"cannot read GBNF at {body[pos:]!r}"
            pos = m.end()
            lit, cls, ref, rep, op, _ = m.groups()
            if lit is not None:
                out.append(re.escape(lit.encode().decode("unicode_escape")))
            elif cls is not None:
                out.append(cls)
            elif ref is not None:
                out.append("(?:" + convert(ref, depth + 1) + ")")
            elif rep is not None or op in ("?", "*", "+", "|", ")"):
                out.append(rep or op)
            elif op == "(":
                out.append("(?:")
        return "".join(out)

    return re.compile(convert("root"))


def test_grammar_admits_exactly_the_two_line_format():
    g = proposal_grammar(NAMES, max_int_digits=3, max_frac_digits=6, max_thought_chars=60)
    assert "::=" in g and g.startswith("#")
    rx = gbnf_to_regex(g)
    good = [
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: keep NIQE falling.",
        "Weights: l1:perceptual:gan=1:0:0.001\nThoughts: x\n",
        "Weights: l1:perceptual:gan=100:0.123456:7\nThoughts: " + "a" * 60,
    ]
    for text in good:
        assert rx.fullmatch(text), text
        p = parse_proposal(text, NAMES)
        assert set(p.weights) == set(NAMES) and p.thoughts
    bad = [
        "Weights: l1:perceptual:gan=0.7:0.3\nThoughts: x",  # too few numbers
        "Weights: gan:l1:perceptual=0.7:0.3:0.05\nThoughts: x",  # other order
        "Weights: l1:perceptual:gan=-0.7:0.3:0.05\nThoughts: x",  # negative
        "Weights: l1:perceptual:gan=1e-2:0.3:0.05\nThoughts: x",  # exponent
        "Weights: l1:perceptual:gan=1000:0.3:0.05\nThoughts: x",  # too many digits
        "Weights: l1:perceptual:gan=0.1234567:0.3:0.05\nThoughts: x",
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: " + "a" * 61,  # too long
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: one\ntwo",  # second line
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: ",  # empty thoughts
        "Sure! Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: x",  # prose first
        "Weights: l1:perceptual:gan=0.7:0.3:0.05\nThoughts: caf\u00e9",  # non-ASCII
    ]
    for text in bad:
        assert not rx.fullmatch(text), text


def test_grammar_bounds_and_escaping():
    g = proposal_grammar(["l1"], max_int_digits=1, max_frac_digits=2, max_thought_chars=5)
    rx = gbnf_to_regex(g)
    assert rx.fullmatch("Weights: l1=9.99\nThoughts: abcde")
    assert not rx.fullmatch("Weights: l1=10\nThoughts: abcde")
    assert not rx.fullmatch("Weights: l1=1.234\nThoughts: a")
    assert '"Weights: a\\"b=' in proposal_grammar(['a"b'])
    with pytest.raises(ValueError):
        proposal_grammar([])
    with pytest.raises(ValueError):
        proposal_grammar(["l1"], max_thought_chars=0)
