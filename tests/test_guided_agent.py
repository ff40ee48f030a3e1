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
    # the correction sent before the second try (none is recorded after the last: it was never sent)
    assert d.attempts == 2 and "could not be used" in d.exchange[-2]["content"]
    agent = GuidedAgent(backend=Scripted([BackendError("timeout")]))
    d = agent.propose(context(_two_stage_history()))
    assert "backend error" in d.info["llm_fallback"] and d.weights == d.info["shown"][0]["weights"]
    agent = GuidedAgent(backend=Scripted([RuntimeError("segfault-ish")]))  # not a BackendError: still no crash
    d = agent.propose(context(_two_stage_history()))
    assert "RuntimeError" in d.info["llm_fallback"] and d.weights == d.info["shown"][0]["weights"]


class Timed(Scripted):
    def chat(self, messages, **kw):
        res = super().chat(messages, **kw)
        return ChatResult(res.text, "stop", prompt_tokens=700, completion_tokens=20,
                          info={"prompt_eval_tokens": 310, "prompt_eval_ms": 9000.0, "nested": {"x": 1}})


def test_prompt_is_append_only_for_the_prompt_cache_and_timings_are_recorded():
    """Each stage's prompt starts with the previous one up to the end of its history, so llama.cpp
    evaluates only the new tail; the backend's timings go into the record."""
    backend = Timed(["Choice: A\nThoughts: a.", "Choice: A\nThoughts: b."])
    agent = GuidedAgent(backend=backend, needs="Lower NIQE.")
    hist = _two_stage_history()
    d1 = agent.propose(context(hist))
    hist.append(StageRecord(2, 200, dict(d1.weights), {"niqe": 5.85, "psnr_y": 30.1}))
    agent.propose(context(hist))
    first, second = (c["messages"][1]["content"] for c in backend.calls)
    history_end = first.index("\nStage 1 of 12 has ended")
    assert second.startswith(first[:history_end]) and "stage 2: " in second[history_end:]
    assert second.index("History") < second.index("Stage 2 of 12 has ended") < second.index("Options")
    call = d1.exchange[-1]
    assert call["prompt_eval_tokens"] == 310 and call["prompt_tokens"] == 700 and "nested" not in call


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


def test_trials_rank_moves_by_the_measured_paired_improvement():
    calls = []

    def trial(weightings, steps):
        calls.append((weightings, steps))
        # keep -> 5.90; the second move measured best; the first crosses the PSNR floor.
        return [{"niqe": 5.90, "psnr_y": 30.0}, {"niqe": 5.70, "psnr_y": 29.5}, {"niqe": 5.80, "psnr_y": 30.0}]

    ctx = context(_two_stage_history())
    ctx.trial = trial
    d = GuidedAgent(backend="none", trials=2, trial_steps=7).propose(ctx)
    assert len(calls) == 1 and calls[0][1] == 7 and calls[0][0][0] == ctx.current_weights  # keep is the reference
    results = d.info["trials"]["results"]
    assert [r["scores"]["niqe"] for r in results] == [5.90, 5.70, 5.80]
    assert d.weights == calls[0][0][2] and d.info["chosen"]["trial"]["niqe"] == 5.80  # the floor vetoed the better one
    assert any("in the trial psnr_y reached 29.5" in v["why"] for v in d.info["vetoed"]) or \
        all(c["trial"] is None or c["trial"]["psnr_y"] != 29.5 for c in d.info["shown"])


def _noisy_trial(repeat_niqe):
    """keep 5.90, the two moves 5.85 and 5.95; a repeat of keep on fresh batches scores ``repeat_niqe``."""
    calls = []

    def trial(weightings, steps):
        calls.append(weightings)
        if len(weightings) == 1:  # a repeat of keep
            return [{"niqe": repeat_niqe, "psnr_y": 30.0}]
        return [{"niqe": 5.90, "psnr_y": 30.0}, {"niqe": 5.85, "psnr_y": 30.0}, {"niqe": 5.95, "psnr_y": 30.0}][
            : len(weightings)]
    return trial, calls


@pytest.mark.parametrize("repeat_niqe, moves", [(5.98, False), (5.92, True)])
def test_a_move_must_beat_keeping_by_more_than_the_measured_trial_noise(repeat_niqe, moves):
    trial, calls = _noisy_trial(repeat_niqe)
    ctx = context(_two_stage_history())
    ctx.trial = trial
    d = GuidedAgent(backend="none", trials=2, trial_steps=5, noise_trials=1, guards={}).propose(ctx)
    noise = d.info["trials"]["noise"]
    assert len(calls) == 2 and calls[1] == [ctx.current_weights]  # keep again, as a call of its own (fresh batches)
    assert noise["samples"] == [pytest.approx(repeat_niqe - 5.90)] and noise["sd"] == pytest.approx(abs(repeat_niqe - 5.90))
    # A gain of 0.05 against a noise of 0.08 is not a measurement; against 0.02 it is.
    assert (d.weights != ctx.current_weights) is moves
    assert d.info["trials"]["below_noise"] == ([] if moves else [d.info["trials"]["results"][1]["action"]])


def test_without_noise_trials_any_measured_gain_counts():
    trial, calls = _noisy_trial(5.98)
    ctx = context(_two_stage_history())
    ctx.trial = trial
    d = GuidedAgent(backend="none", trials=2, trial_steps=5, guards={}).propose(ctx)
    assert len(calls) == 1 and d.info["trials"]["threshold"] == 0.0 and d.weights != ctx.current_weights


def test_trial_noise_is_pooled_over_the_recorded_stage_ends():
    from agentloss.types import DecisionRecord

    hist = _two_stage_history()
    hist[-1].decision = DecisionRecord(info={"trials": {"noise": {"samples": [0.10, -0.10]}}})
    trial, _ = _noisy_trial(5.90)  # this stage's repeat happens to match exactly
    ctx = context(hist)
    ctx.trial = trial
    d = GuidedAgent(backend="none", trials=2, trial_steps=5, noise_trials=1, guards={}).propose(ctx)
    noise = d.info["trials"]["noise"]
    assert noise["n"] == 3 and noise["sd"] == pytest.approx(math.sqrt(0.02 / 3))  # one lucky pair does not set the bar
    assert d.weights == ctx.current_weights  # 0.05 < 0.082


def test_noise_trials_need_trials_and_a_sane_min_gain():
    with pytest.raises(ValueError, match="set trials"):
        GuidedAgent(backend="none", noise_trials=1)
    with pytest.raises(ValueError, match="min_gain"):
        GuidedAgent(backend="none", trials=1, min_gain=float("nan"))


def test_scheduler_trials_restore_training_exactly():
    import torch

    import agentloss as al
    from agentloss.trials import SnapshotTrials

    def run(with_trial: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
        loss_fn = al.AgentWeightedLoss({"l1": 1.0, "fft": 0.1, "gan": 0.01}, terms={"gan": {"width": 8, "depth": 1}})
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        g = torch.Generator().manual_seed(1)
        trial_batches = iter(lambda: (torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)), None)
        trials = SnapshotTrials(opt, trial_batches, steps=2) if with_trial else None
        psnr = al.CallableObjective(lambda x, r: -float((x - r).abs().mean()), name="neg_l1", higher_is_better=True,
                                    needs_reference=True)
        sched = al.StageScheduler(loss_fn, al.FixedAgent(), [psnr], model, torch.rand(1, 3, 16, 16),
                                  probe_references=torch.rand(1, 3, 16, 16), stage_length=2, trials=trials)
        data = torch.Generator().manual_seed(2)
        for i in range(4):
            x = torch.rand(2, 3, 16, 16, generator=data)
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if with_trial and i == 1:  # what an agent would do at the stage end
                out = sched._trial([{"l1": 1.0, "fft": 0.2, "gan": 0.01}, {"l1": 1.0, "fft": 0.1, "gan": 0.0}])
                assert len(out) == 2 and out[0] != out[1] and trials.iterations == 4
        return model.state_dict(), loss_fn.state_dict()

    (m1, l1), (m2, l2) = run(False), run(True)
    for k in m1:
        torch.testing.assert_close(m1[k], m2[k], rtol=0, atol=0)


def test_guided_templates_can_be_replaced_and_bad_ones_fail_at_construction(tmp_path):
    from agentloss.prompts import PromptTemplateError

    backend = Scripted(["Choice: A\nThoughts: fine"])
    path = tmp_path / "sys.j2"
    path.write_text("You pick one of {{ candidates | length }} options for {{ primary }}.")
    agent = GuidedAgent(backend=backend, templates={"system": str(path)})
    agent.propose(context(_two_stage_history()))
    assert backend.calls[0]["messages"][0]["content"].startswith("You pick one of ")
    assert agent.describe()["templates"]["system"]["source"] == str(path)
    with pytest.raises(PromptTemplateError):
        GuidedAgent(backend="none", templates={"user": "{{ no_such_variable }}"})
    with pytest.raises(PromptTemplateError, match="unknown prompt part"):
        GuidedAgent(backend="none", templates={"needs": "x"})


def test_one_spelling_for_no_model_and_for_the_goal(tmp_path):
    from agentloss.agents import LLMAgent
    from agentloss.agents.factory import dry_run_messages

    assert GuidedAgent(backend="none").backend is None
    with pytest.raises(ValueError, match="needs a language model"):
        LLMAgent(backend="none")
    with pytest.raises(ValueError, match="unknown option"):
        create_agent({"type": "guided", "goal": "sharper"})
    with pytest.raises(ValueError, match="rename 'goal' to 'needs'"):
        dry_run_messages({"type": "llm", "goal": "sharper"}, tmp_path)


def test_the_prompt_command_prints_the_guided_prompt(tmp_path, capsys):
    from agentloss.cli import main
    from agentloss.records import RecordWriter

    w = RecordWriter(tmp_path)
    w.write_meta({"loss_names": list(W0), "initial_weights": W0,
                  "objectives": [{"name": "niqe", "higher_is_better": False},
                                 {"name": "psnr_y", "higher_is_better": True, "needs_reference": True}],
                  "constraints": {"max_step": 2.0, "max_weight": 10.0}})
    for rec in _two_stage_history():
        w.append(rec)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("agent:\n  type: guided\n  needs: Lower NIQE.\n  trials: 2\n")
    assert main(["prompt", str(tmp_path), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "Goal: Lower NIQE." in out and "Options (predicted change over the next stage):" in out
    assert "A) " in out and "Choice: <letter>" in out
    cfg.write_text("agent:\n  type: llm\n  needs: Lower NIQE.\n")
    assert main(["prompt", str(tmp_path), "--config", str(cfg)]) == 0
    assert "Weights: l1:fft:gan=" in capsys.readouterr().out


def test_a_fidelity_guard_never_vetoes_its_own_repair():
    """Near the PSNR floor every move used to be vetoed (pessimistic predictions cross the floor), the
    fidelity-direction ones included, so a run could sit at a too-high GAN weight until the floor broke."""
    from agentloss.agents.proposer import GuidedProposer
    from agentloss.prompts.sample import sample_context

    ctx = sample_context()  # PSNR 24.9 with its floor at 24.8 (S0 25.0, budget 0.2)
    ranked, facts = GuidedProposer().candidates(ctx)
    by_action = {c.action: c for c in ranked}
    assert by_action["lower gan /1.6"].vetoed is None  # towards fidelity: never vetoed by the PSNR guard
    assert "would cross" in by_action["raise gan x1.6"].vetoed  # towards texture: still vetoed
    # Within one noise unit of the floor (headroom 0.03 < 0.05), repair leads even over keeping.
    ctx.history[-1].scores["psnr"] = 24.83
    ranked, facts = GuidedProposer(explore=0.0).candidates(ctx)
    assert facts["guards"]["psnr"]["headroom"] < facts["noise"]["psnr"] and not facts["guards"]["psnr"]["broken"]
    assert next(c.action for c in ranked if c.vetoed is None) == "lower gan /1.6"
