"""Trials and an EMA of the weights: the probe must read what the trials train, or the run says so."""

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import agentloss as al
from agentloss.trials import default_step


class TryTwo(al.FixedAgent):
    """Tries two different weightings each stage end, then keeps the current weights."""

    def propose(self, ctx):
        self.seen = ctx.trial([{"l1": 1.0, "mse": 0.0}, {"l1": 0.0, "mse": 1.0}], 3)
        return super().propose(ctx)


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)
    batches = iter(lambda: (torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)), None)
    mean = al.CallableObjective(lambda x: x.mean().item(), name="mean", higher_is_better=True)
    return model, ema, loss_fn, opt, batches, mean


def _train(sched, model, ema, loss_fn, opt, n):
    for _ in range(n):
        x = torch.rand(2, 3, 8, 8)
        loss = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        sched.step()


def test_trials_reading_an_ema_they_do_not_update_are_flagged_in_the_record():
    model, ema, loss_fn, opt, batches, mean = _parts()
    agent = TryTwo()
    sched = al.StageScheduler(loss_fn, agent, [mean], model, torch.rand(2, 3, 8, 8), stage_length=2,
                              restore_fn=lambda m, x: ema.module(x), trials=al.SnapshotTrials(opt, batches, steps=3))
    _train(sched, model, ema, loss_fn, opt, 2)
    assert agent.seen[0] == agent.seen[1]
    assert any("scored exactly the same" in w for w in sched.history[1].warnings)


def test_ema_probe_model_with_trials_that_snapshot_and_update_it():
    model, ema, loss_fn, opt, batches, mean = _parts()

    def step(m, lf, o, batch):
        default_step(m, lf, o, batch)
        ema.update_parameters(m)

    agent = TryTwo()
    trials = al.SnapshotTrials(opt, batches, steps=3, step_fn=step, state=[ema])
    sched = al.StageScheduler(loss_fn, agent, [mean], model, torch.rand(2, 3, 8, 8), stage_length=2,
                              probe_model=ema, trials=trials)
    _train(sched, model, ema, loss_fn, opt, 1)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    probe_before = sched.restore_probe()[0]
    sched.end_stage()
    assert agent.seen[0] != agent.seen[1]
    assert not sched.history[1].warnings
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())  # trials put the EMA back
    assert torch.equal(sched.restore_probe()[0], probe_before)


def test_probe_model_not_snapshotted_by_trials_is_refused():
    model, ema, loss_fn, opt, batches, mean = _parts()
    with pytest.raises(ValueError, match=r"state=\[probe_model\]"):
        al.StageScheduler(loss_fn, al.FixedAgent(), [mean], model, torch.rand(1, 3, 8, 8), stage_length=2,
                          probe_model=ema, trials=al.SnapshotTrials(opt, batches))


def test_an_agent_asking_for_trials_without_snapshot_trials_is_refused():
    model, ema, loss_fn, opt, batches, mean = _parts()
    agent = al.GuidedAgent(backend="none", trials=2)
    with pytest.raises(ValueError, match="SnapshotTrials") as e:
        al.StageScheduler(loss_fn, agent, [mean], model, torch.rand(1, 3, 8, 8), stage_length=2)
    assert "trials=trials" in str(e.value)


def test_state_objects_must_be_restorable():
    model, ema, loss_fn, opt, batches, mean = _parts()
    with pytest.raises(TypeError, match="state_dict"):
        al.SnapshotTrials(opt, batches, state=[object()])


def test_trial_batches_may_be_any_nesting_of_tensors():
    """A step_fn of a framework (Lightning, HF) takes the batch as its training step does: dicts, lists, tuples."""
    model = torch.nn.Conv2d(3, 3, 1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def step(model, loss_fn, optimizer, batch):
        seen.append((type(batch).__name__, type(batch["pair"]).__name__, batch["name"]))
        optimizer.zero_grad()
        loss_fn(model(batch["pair"][0]), batch["pair"][1]).backward()
        optimizer.step()

    batches = iter(lambda: {"pair": [torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)], "name": "x"}, None)
    trials = al.SnapshotTrials(opt, batches, steps=2, step_fn=step)
    a, b = trials.run([{"l1": 1.0, "mse": 0.0}, {"l1": 0.0, "mse": 1.0}], model, loss_fn,
                      lambda: {"w": model.weight.sum().item()})
    assert seen == [("dict", "list", "x")] * 4 and a != b


def test_trials_put_the_gradients_back():
    """Loops that zero gradients after their step (HF Trainer) must not inherit a trial's last gradients."""
    model = torch.nn.Conv2d(3, 3, 1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.weight.grad = torch.full_like(model.weight, 0.25)  # bias.grad stays None
    batches = iter(lambda: (torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)), None)
    al.SnapshotTrials(opt, batches, steps=2).run([{"l1": 1.0}], model, loss_fn, dict)
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 0.25)) and model.bias.grad is None
