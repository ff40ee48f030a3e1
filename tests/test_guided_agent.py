"""GuidedAgent: effects from history, guarded proposals, the model's choice, fallbacks."""

from __future__ import annotations

import math

import pytest

from agentloss.agents import GuidedAgent, create_agent
from agentloss.agents.base import DecisionContext, ObjectiveInfo
from agentloss.agents.effects import estimate_effects
from agentloss.backends.base import BackendError, ChatResult
from agentloss.constraints import WeightConstraints
from agentloss.records import StageRecord

OBJECTIVES = [ObjectiveInfo("niqe", False), ObjectiveInfo("psnr_y", True, needs_reference=True)]
W0 = {"l1": 1.0, "fft": 0.1, "gan": 0.01}


def context(history, current=None, constraints=None):
    return DecisionContext(list(W0), dict(current or history[-1].weights), dict(W0), history, OBJECTIVES,
                           constraints or WeightConstraints(max_weight=10.0, max_step=2.0), len(history) - 1, 12, 100)


def simulate(agent, stages=12, gan_gain=0.25, gan_cost=0.12, noise=None):
    """A toy training whose response to the weights is known.

    Per stage: NIQE drifts -0.02 and falls ``gan_gain`` per e-fold of the GAN weight above its
    start; PSNR rises 0.02 and falls ``gan_cost`` dB per e-fold above the start. So raising GAN
    trades PSNR for NIQE, and the agent should raise it until the PSNR guard (S0 - 0.2) binds.
    """
    import random

    rng = random.Random(0)
    hist = [StageRecord(0, 0, dict(W0), {"niqe": 6.0, "psnr_y": 30.0})]
    weights = dict(W0)
    for k in range(1, stages + 1):
        x = math.log(weights["gan"] / W0["gan"])
        prev = hist[-1].scores
        eps = (lambda: rng.gauss(0, noise)) if noise else (lambda: 0.0)
        niqe = prev["niqe"] - 0.02 - gan_gain * max(0.0, x - math.log(hist[-1].weights["gan"] / W0["gan"])) \
            - 0.05 * x + eps()
        psnr = 30.0 + 0.02 * k - gan_cost * x + eps() / 5
        rec = StageRecord(k, k * 100, dict(weights), {"niqe": niqe, "psnr_y": psnr})
        hist.append(rec)
        d = agent.propose(context(hist))
        rec.decision = d.to_dict()
        weights = d.weights
    return hist


def test_effects_recover_known_slopes_with_errors():
    hist = [StageRecord(0, 0, {"l1": 1, "gan": 0.01}, {"niqe": 6.0})]
    gans = [0.01, 0.02, 0.02, 0.04, 0.02, 0.02, 0.01, 0.02]
    for k, g in enumerate(gans[1:], 1):
        d = math.log(g / gans[k - 1])
        hist.append(StageRecord(k, k, {"l1": 1, "gan": g}, {"niqe": hist[-1].scores["niqe"] - 0.03 - 0.2 * d}))
    eff = estimate_effects(hist, "niqe", ["gan"], ridge=1e-6)
    assert eff.slopes["gan"] == pytest.approx(-0.2, abs=1e-3) and eff.drift == pytest.approx(-0.03, abs=1e-3)
    assert eff.n == 7 and eff.slope_se["gan"] < 0.01
    hist[3].scores["niqe"] = None  # a failed objective: its two changes are skipped, not crashed on
    assert estimate_effects(hist, "niqe", ["gan"]).n == 5


def test_guided_raises_the_perceptual_weight_until_the_guard_binds():
    hist = simulate(GuidedAgent(backend="none"))
    gans = [r.weights["gan"] for r in hist]
    psnr = [r.scores["psnr_y"] for r in hist]
    assert max(gans) > 2 * W0["gan"]  # it moved towards texture
    assert min(psnr) > 30.0 - 0.2 - 0.15  # never more than about one step past the floor
    assert hist[-1].scores["niqe"] < simulate(create_agent("fixed"))[-1].scores["niqe"] - 0.2
    assert all(r.weights["l1"] == 1.0 for r in hist)  # the anchor is not tuned
    explained = hist[3].decision["thoughts"]
    assert "expected niqe change" in explained and "psnr_y" in explained


def test_guard_broken_offers_only_moves_back():
    hist = [StageRecord(0, 0, dict(W0), {"niqe": 6.0, "psnr_y": 30.0}),
            StageRecord(1, 100, {**W0, "gan": 0.02}, {"niqe": 5.7, "psnr_y": 29.6})]
    agent = GuidedAgent(backend="none")
    ranked, facts = agent.candidates(context(hist))
    assert facts["guards"]["psnr_y"]["broken"]
    allowed = [c for c in ranked if c.vetoed is None]
    assert allowed and all(c.log_change.get("gan", 0) <= 0 for c in allowed) and all(c.log_change for c in allowed)
    assert {c.action for c in allowed} == {"lower gan /1.6", "raise fft x1.6"}  # back to start, or more fidelity
    chosen = agent.propose(context(hist)).info["chosen"]["action"]
    assert chosen in {"lower gan /1.6", "raise fft x1.6"}


class Scripted:
    supports_grammar = True

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def chat(self, messages, *, max_tokens=256, temperature=0.0, seed=None, grammar=None):
        self.calls.append({"messages": messages, "grammar": grammar})
        a = self.answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return ChatResult(a, "stop")

    def describe(self):
        return {"type": "scripted", "api_key": "sk-secret"}


def _two_stage_history():
    return [StageRecord(0, 0, dict(W0), {"niqe": 6.0, "psnr_y": 30.0}),
            StageRecord(1, 100, dict(W0), {"niqe": 5.9, "psnr_y": 30.05})]


def test_the_model_chooses_among_shown_options_and_explains():
    backend = Scripted(["Choice: B\nThoughts: keeping is safer while PSNR has little headroom."])
    agent = GuidedAgent(backend=backend, needs="Lower NIQE, lose at most 0.2 dB PSNR.")
    d = agent.propose(context(_two_stage_history()))
    shown = d.info["shown"]
    assert d.weights == shown[1]["weights"] and d.thoughts.startswith("keeping is safer")
    prompt = backend.calls[0]["messages"][1]["content"]
    assert "Lower NIQE, lose at most 0.2 dB PSNR." in prompt and "A) " in prompt and "psnr_y must stay above" in prompt
    assert backend.calls[0]["grammar"].startswith('root ::= "Choice: "')
    assert "sk-secret" not in str(agent.describe())


def test_unusable_answers_fall_back_to_the_top_proposal():
    backend = Scripted(["I think gan should go up", "Choice: Z\nThoughts: none"])
    agent = GuidedAgent(backend=backend)
    d = agent.propose(context(_two_stage_history()))
    assert d.weights == d.info["shown"][0]["weights"] and "unusable" in d.info["llm_fallback"]
    assert d.attempts == 2 and "could not be used" in d.exchange[-1]["content"]
    agent = GuidedAgent(backend=Scripted([BackendError("timeout")]))
    d = agent.propose(context(_two_stage_history()))
    assert "backend error" in d.info["llm_fallback"] and d.weights == d.info["shown"][0]["weights"]


def test_guided_with_real_llama_cpp_and_grammar(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from tests.tiny_models import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", n_ctx_train=4096)
    agent = create_agent({"type": "guided", "backend": {"type": "llama_cpp", "model_path": str(gguf), "n_ctx": 4096,
                                                         "n_threads": 1}, "max_tokens": 24})
    d = agent.propose(context(_two_stage_history()))
    # A random-weight model answers noise, but the grammar makes it a valid choice of a shown option.
    assert d.info["llm_fallback"] is None and d.weights in [c["weights"] for c in d.info["shown"]]
