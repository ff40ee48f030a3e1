"""PopulationAgent: random candidates tried from a snapshot, the best by the primary objective kept."""

from __future__ import annotations

import json
import math

import pytest
import torch

import agentloss as al
from agentloss.agents.factory import agent_options, create_agent
from agentloss.agents.population import PopulationAgent
from agentloss.constraints import WeightConstraints
from agentloss.trials import SnapshotTrials
from agentloss.types import DecisionContext, ObjectiveInfo, StageRecord

W0 = {"l1": 1.0, "fft": 0.1, "gan": 0.01}
OBJECTIVES = [ObjectiveInfo("niqe", False), ObjectiveInfo("psnr_y", True, needs_reference=True)]


def context(trial=None, current=None, constraints=None, psnr_now=30.0) -> DecisionContext:
    history = [StageRecord(0, 0, dict(W0), {"niqe": 6.0, "psnr_y": 30.0}),
               StageRecord(1, 100, dict(W0), {"niqe": 5.9, "psnr_y": psnr_now})]
    return DecisionContext(list(W0), dict(current or W0), dict(W0), history, OBJECTIVES,
                           constraints or WeightConstraints(max_weight=10.0, max_step=2.0), 1, 8, 100, trial=trial)


class FakeTrials:
    """A trial function whose score is a known function of the weights; records what it was asked."""

    def __init__(self, niqe, psnr=lambda w: 30.0):
        self.niqe, self.psnr, self.calls = niqe, psnr, []

    def __call__(self, weightings, steps):
        self.calls.append(([dict(w) for w in weightings], steps))
        return [{"niqe": self.niqe(w), "psnr_y": self.psnr(w)} for w in weightings]


def test_picks_the_candidate_measured_best_on_the_primary():
    fake = FakeTrials(niqe=lambda w: 6.0 + math.log(w["gan"] / 0.01) + 0.5 * math.log(w["fft"] / 0.1))
    d = PopulationAgent(trials=4, trial_steps=7, seed=3).propose(context(fake))
    (tried, steps), = fake.calls
    assert steps == 7 and len(tried) == 5 and tried[0] == W0  # keep first, then 4 candidates
    assert all(c["l1"] == 1.0 for c in tried)  # the anchor (largest initial weight) is never perturbed
    best = min(range(1, 5), key=lambda i: fake.niqe(tried[i]))
    assert fake.niqe(tried[best]) < 6.0  # the test needs a candidate better than keeping
    assert d.weights == tried[best] and d.info["chosen"] == best and d.action.startswith(f"candidate {best}:")
    assert d.info["candidates"][best]["improvement"] == pytest.approx(6.0 - fake.niqe(tried[best]))


def test_keeps_on_ties_and_when_no_candidate_is_better():
    flat = FakeTrials(niqe=lambda w: 6.0)
    d = PopulationAgent(seed=0).propose(context(flat))
    assert d.weights == W0 and d.info["chosen"] == 0 and d.action == "keep the current weights"
    worse = FakeTrials(niqe=lambda w: 6.0 + abs(math.log(w["gan"] / 0.01)) + abs(math.log(w["fft"] / 0.1)))
    assert PopulationAgent(seed=1).propose(context(worse)).weights == W0
    # Two candidates equally better: the first drawn wins.
    tie = FakeTrials(niqe=lambda w: 6.0 if w == W0 else 5.0)
    d = PopulationAgent(trials=3, seed=2).propose(context(tie))
    assert d.info["chosen"] == 1 and d.weights == tie.calls[0][0][1]


def test_the_fidelity_guard_vetoes_a_candidate_beyond_the_floor():
    # Lower NIQE with more GAN, but PSNR falls below S0 - 0.2 = 29.8 for every candidate that raised GAN.
    fake = FakeTrials(niqe=lambda w: 6.0 - math.log(w["gan"] / 0.01),
                      psnr=lambda w: 30.0 - (1.0 if w["gan"] > 0.01 else 0.0))
    d = PopulationAgent(trials=6, seed=5).propose(context(fake))
    tried = fake.calls[0][0]
    assert any(w["gan"] > 0.01 for w in tried[1:])  # something the guard must stop
    assert d.weights["gan"] <= 0.01
    assert all(r["vetoed"].startswith("in the trial psnr_y reached 29") for r in d.info["candidates"][1:]
               if r["weights"]["gan"] > 0.01)
    # Without the guard the best NIQE wins whatever it costs.
    d = PopulationAgent(trials=6, seed=5, guards={}).propose(context(FakeTrials(fake.niqe, fake.psnr)))
    assert d.weights["gan"] == max(w["gan"] for w in tried)


def test_deterministic_under_a_seed():
    def draws(seed):
        fake = FakeTrials(niqe=lambda w: 6.0)
        agent = PopulationAgent(seed=seed)
        for _ in range(3):
            agent.propose(context(fake))
        return [c for tried, _ in fake.calls for c in tried]

    assert draws(4) == draws(4)
    assert draws(4) != draws(5)


def test_resumes_exactly_from_its_state_dict():
    fake = FakeTrials(niqe=lambda w: 6.0 - w["gan"] + w["fft"])
    whole = PopulationAgent(seed=7)
    weights = dict(W0)
    expected = []
    for _ in range(4):
        d = whole.propose(context(fake, current=weights))
        weights = d.weights
        expected.append(d.weights)
    first = PopulationAgent(seed=7)
    weights = dict(W0)
    got = []
    for _ in range(2):
        weights = first.propose(context(fake, current=weights)).weights
        got.append(weights)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON-able data
    resumed = PopulationAgent(seed=999)  # the state, not the constructor's seed, decides what comes next
    resumed.load_state_dict(state)
    for _ in range(2):
        weights = resumed.propose(context(fake, current=weights)).weights
        got.append(weights)
    assert got == expected and resumed.decisions == 4


def test_candidates_stay_within_bounds_and_the_move_limit():
    c = WeightConstraints(max_weight=10.0, max_step=1.5, per_loss={"gan": (0.0, 0.012), "fft": (0.09, 1.0)})
    fake = FakeTrials(niqe=lambda w: 6.0)
    agent = PopulationAgent(trials=50, step=4.0, seed=0)  # a step larger than max_step: the limit wins
    agent.propose(context(fake, constraints=c))
    cands = fake.calls[0][0][1:]
    assert all(c.within_bounds(w) for w in cands)
    for w in cands:
        for k, v in w.items():
            lo, hi = c.allowed_range(k, W0[k])
            assert lo <= v <= hi
    assert max(w["gan"] for w in cands) == 0.012 and min(w["fft"] for w in cands) == 0.09  # clipped, not dropped
    assert min(w["gan"] for w in cands) < 0.01 / 1.4 and max(w["fft"] for w in cands) > 0.1 * 1.4
    # A zero weight sits at the floor: switched on (at most floor x max_step) or left off, never in between.
    fake = FakeTrials(niqe=lambda w: 6.0)
    PopulationAgent(trials=8).propose(context(fake, current={"l1": 1.0, "fft": 0.0, "gan": 0.01}))
    fft = [w["fft"] for w in fake.calls[0][0][1:]]
    floor = WeightConstraints().step_floor
    assert any(v == 0.0 for v in fft) and any(v > 0.0 for v in fft)
    assert all(v == 0.0 or floor < v <= 2 * floor for v in fft)


def test_without_trials_it_keeps_and_says_why_and_bad_configs_fail_early():
    d = PopulationAgent().propose(context(None))
    assert d.weights == W0 and "SnapshotTrials" in d.fallback
    for bad in ({"trials": 0}, {"step": 1.0}, {"trial_steps": 0}):
        with pytest.raises(ValueError):
            PopulationAgent(**bad)
    with pytest.raises(ValueError, match="unknown option"):
        create_agent({"type": "population", "steps": 3})
    assert {"trials", "trial_steps", "step", "seed"} <= set(agent_options("population"))
    with pytest.raises(ValueError, match="objective 'lpips'"):
        PopulationAgent(primary="lpips").check(list(W0), ["niqe", "psnr_y"])
    with pytest.raises(ValueError, match="only text"):
        PopulationAgent().check(list(W0), [])


def _tiny_run(agent, trials: SnapshotTrials | None, stages: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    loss_fn = al.AgentWeightedLoss(dict(W0), terms={"gan": {"width": 8, "depth": 1}},
                                   constraints=WeightConstraints(max_weight=10.0, max_step=2.0))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    batches = iter(lambda: (torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)), None)
    snap = SnapshotTrials(opt, batches, steps=3) if trials is None else trials
    score = al.CallableObjective(lambda x, r: float((x - r).abs().mean()), name="l1_err", higher_is_better=False,
                                 needs_reference=True)
    probe, ref = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    sched = al.StageScheduler(loss_fn, agent, [score], model, probe, probe_references=ref, stage_length=2,
                              total_stages=stages, trials=snap)
    data = torch.Generator().manual_seed(2)
    for _ in range(2 * stages):
        x = torch.rand(2, 3, 16, 16, generator=data)
        loss = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return sched, snap


def test_a_real_run_through_the_scheduler_with_snapshot_trials():
    agent = create_agent({"type": "population", "trials": 2, "trial_steps": 3, "step": 2.0, "seed": 0})
    assert isinstance(agent, PopulationAgent) and agent.thread_safe
    sched, snap = _tiny_run(agent, None, stages=3)
    decided = [r for r in sched.history if r.decision is not None and r.decision.proposed is not None]
    assert len(decided) == 2 and snap.iterations == 2 * 3 * 3  # 2 decisions x (keep + 2) x 3 steps
    for rec in decided:
        info = rec.decision.info
        rows = info["candidates"]
        assert len(rows) == 3 and rows[0]["weights"] == rec.weights and info["primary"] == "l1_err"
        measured = [r["scores"]["l1_err"] for r in rows]
        assert len(set(measured)) == 3  # the trials really trained different weightings
        best = min(range(3), key=lambda i: measured[i])
        assert info["chosen"] == (best if measured[best] < measured[0] else 0)
        assert rec.next_weights == rows[info["chosen"]]["weights"] and not rec.decision.clipped
        assert rec.timings["trial_s"] > 0
    # An agent asking for trials without SnapshotTrials is refused before training.
    with pytest.raises(ValueError, match="SnapshotTrials"):
        al.StageScheduler(al.AgentWeightedLoss(dict(W0)), PopulationAgent(), [al.PSNRObjective()],
                          torch.nn.Conv2d(3, 3, 1), torch.rand(1, 3, 8, 8), probe_references=torch.rand(1, 3, 8, 8),
                          stage_length=2)
