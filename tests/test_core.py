"""Unit tests of the core: weights and constraints, the weighted loss, objectives, scheduler, records."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import agentloss as al
from agentloss.agents.base import BaseAgent, Decision, DecisionContext
from agentloss.constraints import validate_weights
from agentloss.records import RecordWriter, read_records

# ---------------------------------------------------------------------------------- constraints


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"l1": 1.0, "bogus": 1.0}, "unknown loss name"),
        ({"l1": 1.0}, "missing weight"),
        ({"l1": float("nan"), "mse": 1.0}, "not finite"),
        ({"l1": float("inf"), "mse": 1.0}, "not finite"),
        ({"l1": -0.1, "mse": 1.0}, "negative"),
        ({"l1": 0.0, "mse": 0.0}, "all weights are zero"),
        ({"l1": "abc", "mse": 1.0}, "not a number"),
    ],
)
def test_validate_weights_rejects_with_reason(weights, message):
    with pytest.raises(al.WeightError, match=message):
        validate_weights(weights, ["l1", "mse"])


def test_constraints_clip_bounds_and_moves():
    c = al.WeightConstraints(max_weight=10.0, per_loss={"gan": (0.0, 0.1)}, max_step=2.0)
    w, notes, kept, _ = c.apply({"l1": 50.0, "gan": 1.0, "mse": 0.0}, previous={"l1": 8.0, "gan": 0.01, "mse": 1.0})
    assert w == {"l1": 10.0, "gan": 0.02, "mse": 0.5} and not kept
    assert len(notes) == 3 and any("gan" in n for n in notes)
    # a zero weight may grow from the floor, and a weight at the floor may drop to zero
    w = c.apply({"l1": 1.0, "gan": 0.05, "mse": 0.0}, previous={"l1": 1.0, "gan": 0.0, "mse": 0.001}).weights
    assert w["gan"] == pytest.approx(0.002) and w["mse"] == 0.0


def test_constraints_never_clip_to_all_zero():
    c = al.WeightConstraints(max_step=2.0)
    w, notes, kept, _ = c.apply({"l1": 0.0}, previous={"l1": 1.0})
    assert w == {"l1": 0.5} and not kept
    c = al.WeightConstraints(per_loss={"l1": (0.0, 0.0)})
    w, notes, kept, reason = c.apply({"l1": 1.0}, previous={"l1": 2.0})
    assert w == {"l1": 2.0} and "previous weights kept" in notes[-1]
    assert kept and reason == notes[-1]


@pytest.mark.parametrize("kwargs", [{"min_weight": -1}, {"max_weight": float("inf")}, {"max_step": 0.5},
                                    {"per_loss": {"l1": (2.0, 1.0)}}, {"step_floor": 0}])
def test_constraints_bad_config(kwargs):
    with pytest.raises(ValueError):
        al.WeightConstraints(**kwargs)


# -------------------------------------------------------------------------------- weighted loss


def test_weighted_loss_sum_and_last_values():
    loss_fn = al.AgentWeightedLoss({"l1": 2.0, "mse": 0.5})
    pred = torch.zeros(2, 3, 8, 8, requires_grad=True)
    target = torch.full((2, 3, 8, 8), 0.5)
    total = loss_fn(pred, target)
    assert total.item() == pytest.approx(2 * 0.5 + 0.5 * 0.25)
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert loss_fn.last_values == pytest.approx({"l1": 0.5, "mse": 0.25})


def test_weighted_loss_skips_zero_terms():
    calls = []

    class Counting(nn.Module):
        def forward(self, p, t):
            calls.append(1)
            return (p - t).abs().mean()

    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mine": 0.0}, terms={"mine": Counting()})
    loss_fn(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    assert calls == [] and math.isnan(loss_fn.last_values["mine"])


def test_weighted_loss_rejects_bad_construction():
    with pytest.raises(al.WeightError, match="no loss named"):
        al.AgentWeightedLoss({"nonexistent_loss": 1.0})
    with pytest.raises(al.WeightError, match="negative"):
        al.AgentWeightedLoss({"l1": -1.0})
    with pytest.raises(al.WeightError, match="outside its bounds"):
        al.AgentWeightedLoss({"l1": 5.0}, constraints=al.WeightConstraints(max_weight=1.0))
    with pytest.raises(al.WeightError, match="no weight"):
        al.AgentWeightedLoss({"l1": 1.0}, terms={"mse": {}})
    with pytest.raises(al.WeightError):
        al.AgentWeightedLoss({})
    with pytest.raises(al.WeightError, match="bad options for loss 'l1'"):
        al.AgentWeightedLoss({"l1": 1.0}, terms={"l1": {"no_such_option": 3}})


def test_set_weights_validates_and_keeps_old_on_error():
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5}, constraints=al.WeightConstraints(max_weight=2.0))
    for bad in ({"l1": float("nan"), "mse": 1.0}, {"l1": 3.0, "mse": 1.0}, {"l1": 1.0}, {"l1": 0.0, "mse": 0.0}):
        with pytest.raises(al.WeightError):
            loss_fn.set_weights(bad)
        assert loss_fn.weights == {"l1": 1.0, "mse": 0.5}
    loss_fn.set_weights({"mse": 2.0}, partial=True)
    assert loss_fn.weights == {"l1": 1.0, "mse": 2.0}


def test_weighted_loss_state_dict_roundtrip():
    a = al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5})
    a.set_weights({"l1": 0.3, "mse": 0.7})
    b = al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5})
    b.load_state_dict(a.state_dict())
    assert b.weights == {"l1": 0.3, "mse": 0.7}
    c = al.AgentWeightedLoss({"l1": 1.0, "charbonnier": 0.5})
    with pytest.raises(al.WeightError, match="loss names"):
        c.load_state_dict(a.state_dict())


# ----------------------------------------------------------------------------------- objectives


def test_callable_objective_failures_are_per_image():
    def flaky(x):
        if x.mean() > 0.9:
            raise RuntimeError("collapsed")
        return x.mean().item()

    obj = al.CallableObjective(flaky, name="m", higher_is_better=False)
    ok, bad = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    r = obj.score([ok, bad])
    assert r.per_image == [0.0, None] and r.mean is None and "collapsed" in r.errors[0]
    skip = al.CallableObjective(flaky, name="m", higher_is_better=False, on_image_error="skip")
    assert skip.score([ok, bad]).mean == 0.0
    nan = al.CallableObjective(lambda x: float("nan"), name="n", higher_is_better=True)
    assert nan.score([ok]).mean is None


def test_pyiqa_objective_direction_from_pyiqa(niqe_kwargs):
    niqe = al.PyiqaObjective("niqe", **niqe_kwargs)
    psnr = al.PSNRObjective()
    assert (niqe.higher_is_better, niqe.needs_reference) == (False, False)
    assert (psnr.higher_is_better, psnr.needs_reference, psnr.name) == (True, True, "psnr_y")
    assert niqe.value_range == (0.0, 100.0)
    with pytest.raises(ValueError, match="no metric"):
        al.PyiqaObjective("definitely_not_a_metric")


def test_probe_psnr_can_measure_what_the_final_evaluation_measures(photo):
    """A guard watches the PSNR a run is judged on: with the border crop and 8-bit rounding of evaluate()."""
    from agentloss.datasets.evaluation import evaluate

    gt = photo[:, :, :64, :64]
    out = (gt + 0.02 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    out[..., :2, :] = 0.0  # wrong at the border only: where the conventions differ most
    judged = evaluate(None, [(gt, gt)], scale=2, metrics=("psnr",), restore_fn=lambda lq: out).mean["psnr"]
    matched = al.PSNRObjective(crop_border=2, quantize=True).score([out], [gt]).mean
    plain = al.PSNRObjective().score([out], [gt]).mean
    assert matched == pytest.approx(judged, abs=1e-3) and abs(plain - judged) > 1.0  # float32 vs float64 means
    with pytest.raises(ValueError, match="crop_border"):
        al.PSNRObjective(crop_border=-1)


def test_task_runs_guard_psnr_as_their_evaluation_does(tmp_path):
    from agentloss.tasks.build import build_objectives
    from agentloss.tasks.config import load_config

    base = {"task": "cisr", "backbone": {"name": "small_sr", "scale": 2}, "losses": {"l1": 1.0},
            "objectives": [{"name": "psnr"}, {"name": "ssim"}], "agent": {"type": "fixed"}, "out": str(tmp_path)}
    psnr, ssim = build_objectives(load_config(base), torch.device("cpu"))
    assert (psnr.kwargs["crop_border"], psnr.quantize, ssim.kwargs["crop_border"], ssim.quantize) == (2, True, 2, True)
    own = load_config({**base, "objectives": [{"name": "psnr", "options": {"crop_border": 0, "quantize": False}}]})
    (psnr,) = build_objectives(own, torch.device("cpu"))
    assert "crop_border" not in psnr.kwargs and not psnr.quantize  # a config's own options win


def test_niqe_survives_collapsed_output(niqe_kwargs, photo):
    """pyiqa's NIQE raises LinAlgError on a flat image: the objective reports a failure, it does not raise."""
    niqe = al.PyiqaObjective("niqe", **niqe_kwargs)
    flat = torch.full((1, 3, 192, 192), 1.0)
    r = niqe.score([photo[:, :, :192, :192], flat])
    assert r.per_image[0] is not None and r.per_image[1] is None and r.mean is None
    assert r.errors and "image 1" in r.errors[0]


# ------------------------------------------------------------------------------------ scheduler


class ScriptedAgent(BaseAgent):
    """Answers from a list; an Exception in the list is raised."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = list(answers)
        self.contexts: list[DecisionContext] = []

    def propose(self, context):
        self.contexts.append(context)
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a if isinstance(a, Decision) else Decision(weights=a)


def _tiny_setup(agent, objectives=None, run_dir=None, **kw):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0}, constraints=kw.pop("constraints", None))
    objectives = objectives or [al.CallableObjective(lambda x: x.mean().item(), name="mean", higher_is_better=True)]
    sched = al.StageScheduler(loss_fn, agent, objectives, model, torch.rand(2, 3, 8, 8), stage_length=2,
                              run_dir=run_dir, **kw)
    opt = torch.optim.SGD(model.parameters(), 0.01)

    def train(n):
        out = []
        for _ in range(n):
            x = torch.rand(1, 3, 8, 8)
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            r = sched.step()
            if r is not None:
                out.append(r)
        return out

    return model, loss_fn, sched, train


def test_scheduler_applies_answers_and_records(tmp_path):
    agent = ScriptedAgent([{"l1": 0.5, "mse": 2.0}, {"l1": 0.25, "mse": 2.0}])
    model, loss_fn, sched, train = _tiny_setup(agent, run_dir=tmp_path)
    records = train(4)
    assert [r.stage for r in records] == [1, 2]
    assert sched.history[0].stage == 0 and sched.history[0].iteration == 0  # S0 scored before any update
    assert records[0].weights == {"l1": 1.0, "mse": 1.0} and records[0].next_weights == {"l1": 0.5, "mse": 2.0}
    assert records[1].weights == {"l1": 0.5, "mse": 2.0} and loss_fn.weights == {"l1": 0.25, "mse": 2.0}
    # the agent saw the full history including the stage just ended, and the objective's direction
    ctx = agent.contexts[1]
    assert [r.stage for r in ctx.history] == [0, 1, 2] and ctx.objectives[0].higher_is_better
    on_disk = read_records(tmp_path)
    assert [r.stage for r in on_disk] == [0, 1, 2]
    assert on_disk[2].next_weights == {"l1": 0.25, "mse": 2.0}
    assert {"train_s", "restore_s", "score_s", "agent_s"} <= set(on_disk[1].timings)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["loss_names"] == ["l1", "mse"] and meta["objectives"][0]["higher_is_better"] is True
    assert model.training  # train mode restored after probe restores


@pytest.mark.parametrize(
    "answer, reason",
    [
        (RuntimeError("backend exploded"), "agent raised RuntimeError"),
        ({"l1": float("nan"), "mse": 1.0}, "not finite"),
        ({"l1": -1.0, "mse": 1.0}, "negative"),
        ({"l1": 1.0, "typo": 1.0}, "unknown loss name"),
        (Decision(weights={"l1": 1.0, "mse": 1.0}, fallback="model answered nonsense 3 times"), "nonsense"),
    ],
)
def test_scheduler_falls_back_on_bad_agent_answers(answer, reason):
    agent = ScriptedAgent([answer, {"l1": 2.0, "mse": 1.0}])
    _, loss_fn, sched, train = _tiny_setup(agent)
    records = train(4)
    assert reason in records[0].fallback
    assert records[0].next_weights == {"l1": 1.0, "mse": 1.0}
    assert records[1].fallback is None and loss_fn.weights == {"l1": 2.0, "mse": 1.0}


def test_scheduler_falls_back_when_objective_fails():
    state = {"n": 0}

    def sometimes(x):
        state["n"] += 1
        if 3 <= state["n"] <= 4:  # both probe images of stage 1
            raise torch.linalg.LinAlgError("svd failed")
        return 1.0

    agent = ScriptedAgent([{"l1": 2.0, "mse": 1.0}])
    objs = [al.CallableObjective(sometimes, name="niqe_like", higher_is_better=False),
            al.CallableObjective(lambda x: float("nan"), name="nan_obj", higher_is_better=True, on_image_error="skip")]
    _, loss_fn, sched, train = _tiny_setup(agent, objectives=objs)
    records = train(2)
    assert records[0].scores == {"niqe_like": None, "nan_obj": None}
    assert "could not be scored" in records[0].fallback and agent.contexts == []
    assert any("LinAlgError" in e for e in records[0].errors)
    assert loss_fn.weights == {"l1": 1.0, "mse": 1.0}


def test_scheduler_clips_answers_into_constraints():
    agent = ScriptedAgent([{"l1": 100.0, "mse": 1.0}])
    _, loss_fn, _, train = _tiny_setup(agent, constraints=al.WeightConstraints(max_step=2.0))
    rec = train(2)[0]
    assert loss_fn.weights == {"l1": 2.0, "mse": 1.0} and rec.decision.clipped
    assert rec.decision.proposed == {"l1": 100.0, "mse": 1.0} and not rec.decision.kept_previous


def test_scheduler_final_stage_does_not_ask():
    agent = ScriptedAgent([{"l1": 2.0, "mse": 1.0}])
    _, loss_fn, sched, train = _tiny_setup(agent, total_stages=2)
    records = train(8)
    assert [r.stage for r in records] == [1, 2] and len(agent.contexts) == 1
    assert "final stage" in records[1].decision.skipped


def test_probe_validation():
    loss_fn = al.AgentWeightedLoss({"l1": 1.0})
    obj = [al.CallableObjective(lambda x: 0.0, name="z", higher_is_better=True)]
    model = nn.Conv2d(3, 3, 1)
    cases = [
        (torch.rand(3, 8), "NxCxHxW"),
        (torch.randint(0, 255, (1, 3, 8, 8)), "floating-point"),
        (torch.rand(1, 5, 8, 8), "1 or 3 channels"),
        ([], "empty"),
        ("images", "tensor or a list"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    ]
    for probe, msg in cases:
        with pytest.raises(al.ProbeError, match=msg):
            al.StageScheduler(loss_fn, al.FixedAgent(), obj, model, probe, stage_length=1)
    psnr_like = [al.CallableObjective(lambda x, y: 0.0, name="fr", higher_is_better=True, needs_reference=True)]
    with pytest.raises(al.ProbeError, match="need references"):
        al.StageScheduler(loss_fn, al.FixedAgent(), psnr_like, model, torch.rand(2, 3, 8, 8), stage_length=1)
    with pytest.raises(al.ProbeError, match="2 probe images but 1"):
        al.StageScheduler(loss_fn, al.FixedAgent(), psnr_like, model, torch.rand(2, 3, 8, 8), stage_length=1,
                          probe_references=torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="stage_length"):
        al.StageScheduler(loss_fn, al.FixedAgent(), obj, model, torch.rand(1, 3, 8, 8), stage_length=0)


def test_reference_size_mismatch_is_clear_at_s0():
    loss_fn = al.AgentWeightedLoss({"l1": 1.0})
    fr = [al.CallableObjective(lambda x, y: 0.0, name="fr", higher_is_better=True, needs_reference=True)]
    sched = al.StageScheduler(loss_fn, al.FixedAgent(), fr, nn.Conv2d(3, 3, 1), torch.rand(1, 3, 8, 8),
                              probe_references=torch.rand(1, 3, 16, 16), stage_length=1)
    with pytest.raises(al.ProbeError, match="sizes"):
        sched.start()


def test_records_survive_partial_last_line(tmp_path):
    w = RecordWriter(tmp_path)
    w.append(al.StageRecord(stage=0, iteration=0, weights={"l1": 1.0}, scores={"niqe": float("nan")}))
    with open(w.path, "a") as f:
        f.write('{"stage": 1, "iter')  # the process died mid-write
    recs = read_records(tmp_path)
    assert len(recs) == 1 and recs[0].scores == {"niqe": None}


def test_feedback_reaches_agent_and_record():
    agent = ScriptedAgent([{"l1": 1.0, "mse": 1.0}])
    _, _, sched, train = _tiny_setup(agent)
    sched.add_feedback("the outputs look too smooth")
    rec = train(2)[0]
    assert agent.contexts[0].feedback == ["the outputs look too smooth"]
    assert rec.decision.feedback == ["the outputs look too smooth"]


def test_a_new_run_in_a_used_run_dir_moves_old_records_aside(tmp_path):
    _, _, _, train = _tiny_setup(ScriptedAgent([{"l1": 2.0, "mse": 1.0}]), run_dir=tmp_path)
    train(2)
    _, _, _, train = _tiny_setup(ScriptedAgent([{"l1": 3.0, "mse": 1.0}]), run_dir=tmp_path)
    train(2)
    assert [r.next_weights["l1"] for r in read_records(tmp_path)] == [1.0, 3.0]  # only the new run
    old = list(tmp_path.glob("stages.*.jsonl"))
    assert len(old) == 1 and [r.next_weights["l1"] for r in read_records(old[0])] == [1.0, 2.0]


class LooseningAgent(BaseAgent):
    """A misbehaving agent: loosens the limits it is shown, then proposes a huge weight."""

    def propose(self, context):
        context.constraints.max_weight = 1e9
        context.constraints.max_step = None
        return Decision(weights={"l1": 500.0, "mse": 1.0})


def test_an_agent_cannot_loosen_the_limits_the_scheduler_applies():
    _, loss_fn, _, train = _tiny_setup(LooseningAgent(), constraints=al.WeightConstraints(max_weight=10.0, max_step=2.0))
    rec = train(2)[0]
    assert loss_fn.weights == {"l1": 2.0, "mse": 1.0}
    assert loss_fn.constraints.max_weight == 10.0 and loss_fn.constraints.max_step == 2.0
    assert rec.decision.proposed["l1"] == 500.0 and rec.decision.clipped


@pytest.mark.parametrize("bad", [None, {"weights": {"l1": 1.0}}, Decision(weights=None), Decision(weights=[1, 2])])
def test_a_custom_agent_returning_garbage_is_a_recorded_fallback(bad):
    agent = ScriptedAgent([])
    agent.propose = lambda context: bad
    _, loss_fn, _, train = _tiny_setup(agent)
    rec = train(2)[0]
    assert rec.fallback and loss_fn.weights == {"l1": 1.0, "mse": 1.0}


def test_clipping_to_all_zero_keeps_the_previous_weights_and_says_so():
    agent = ScriptedAgent([{"l1": 0.0, "mse": 1.0}])  # valid, but mse may not be above 0
    _, loss_fn, _, train = _tiny_setup(agent)
    loss_fn.constraints = al.WeightConstraints(per_loss={"mse": (0.0, 0.0)}, max_step=None)
    loss_fn.set_weights({"l1": 1.0, "mse": 0.0})
    rec = train(2)[0]
    assert rec.decision.kept_previous and "previous weights kept" in rec.fallback
    assert loss_fn.weights == {"l1": 1.0, "mse": 0.0}


def test_scheduler_state_holds_the_weights_once_and_restores_them():
    agent = ScriptedAgent([{"l1": 2.0, "mse": 0.5}])
    _, loss_fn, sched, train = _tiny_setup(agent)
    train(2)
    state = sched.state_dict()
    assert "weights" not in state and state["history"][-1]["next_weights"] == {"l1": 2.0, "mse": 0.5}
    _, loss2, sched2, _ = _tiny_setup(ScriptedAgent([]))
    sched2.load_state_dict(state)
    assert loss2.weights == {"l1": 2.0, "mse": 0.5}
    old = {**state, "weights": {"l1": 3.0, "mse": 0.5}}  # a state written by an earlier version
    sched2.load_state_dict(old)
    assert loss2.weights == {"l1": 3.0, "mse": 0.5}
