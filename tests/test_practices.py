"""Plain training loops with the practices people use: each a real small loop around the scheduler (CPU).

The blocks of docs/training-practices.md marked ``tested`` are executed as written (with ``"cuda"``
read as ``"cpu"``), so the documented patterns are the ones checked here.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import agentloss as al
from agentloss.probe import restore

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training-practices.md"


def run_doc_block(name: str, namespace: dict) -> dict:
    """Execute the python block after ``<!-- tested: name -->`` in the docs (on the CPU) in ``namespace``."""
    m = re.search(rf"<!-- tested: {name} -->\s*```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert m, f"no tested block {name!r} in {DOCS}"
    exec(m.group(1).replace('"cuda"', '"cpu"'), namespace)  # noqa: S102 - our own docs, run as written
    return namespace


class Net(nn.Module):
    """A tiny residual restoration network."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def stream(seed: int, n: int | None = None, batch: int = 4, size: int = 16):
    """``(lq, gt)`` pairs: gt random, lq a noisy gt; ``n`` of them (``None``: endless)."""
    g = torch.Generator().manual_seed(seed)
    i = 0
    while n is None or i < n:
        gt = torch.rand(batch, 3, size, size, generator=g)
        yield (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1), gt
        i += 1


def objectives() -> list[al.CallableObjective]:
    return [al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True),
            al.CallableObjective(lambda x: x.mean().item(), name="brightness", higher_is_better=True)]


PROBE = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(9))


def scheduler(model, loss_fn, stage_length=2, **kw) -> al.StageScheduler:
    kw.setdefault("agent", al.RandomAgent(seed=0))
    return al.StageScheduler(loss_fn, objectives=objectives(), model=model, probe=PROBE, stage_length=stage_length,
                             total_stages=3, **kw)


class TryTwo(al.FixedAgent):
    """Tries two weightings at each stage end (keeping the current ones); notes what it saw around the trial."""

    def __init__(self, watch=None):
        super().__init__()
        self.watch = watch or (lambda: None)
        self.seen: list[tuple] = []

    def propose(self, ctx):
        before = copy.deepcopy(self.watch())
        scores = ctx.trial([{"l1": 1.0, "mse": 0.0}, {"l1": 0.0, "mse": 1.0}], 3)
        self.seen.append((scores, before, copy.deepcopy(self.watch())))
        return super().propose(ctx)


def rel_close(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol * max(abs(b[k]), 1e-12) for k in a)


def fp32_scores(model: nn.Module) -> dict[str, float]:
    """The probe scored by hand: float32, eval, no grad, no autocast (S0 runs inside the loop's autocast)."""
    model = copy.deepcopy(model).eval()  # a copy: the tests' forward hooks see the scheduler's forwards only
    model._forward_hooks.clear()
    for m in model.modules():
        m._forward_hooks.clear()
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        outs = [model(p.unsqueeze(0)).float().clamp(0, 1) for p in PROBE]
    return {o.name: o.score(outs).mean for o in objectives()}


# -- gradient accumulation -------------------------------------------------------------------------
def test_gradient_accumulation_stage_ends_land_on_optimizer_steps():
    model, loss_fn = make_net(), al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    counts = {"micro": 0, "opt": 0}
    real_step = optimizer.step

    def counted_step(*a, **k):
        counts["opt"] += 1
        return real_step(*a, **k)

    optimizer.step = counted_step
    ends = []

    def at_stage_end(rec):  # what the loop had done when the stage ended
        pending = any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        ends.append((rec.stage, rec.iteration, counts["opt"], counts["micro"], pending))

    def loader():
        for batch in stream(1, n=28):
            counts["micro"] += 1
            yield batch

    accum_steps = 4
    sched = scheduler(model, loss_fn, callbacks=[at_stage_end])
    run_doc_block("accumulation", {"loader": loader(), "model": model, "loss_fn": loss_fn, "optimizer": optimizer,
                                   "sched": sched, "accum_steps": accum_steps})
    # S0 before any update; then stage s ends after 2s optimizer steps = 8s micro-batches, with no
    # partial accumulation pending (the stage end saw whole optimizer steps only).
    assert ends[0][:3] == (0, 0, 0)
    assert ends[1:] == [(s, 2 * s, 2 * s, 2 * s * accum_steps, False) for s in (1, 2, 3)]
    assert sched.iteration == 7 and counts["opt"] == 7  # 28 micro-batches, 3 stages of 2 optimizer steps


# -- bf16 autocast -----------------------------------------------------------------------------------
def _run_fp32() -> list[al.StageRecord]:
    model, loss_fn = make_net(), al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    sched = scheduler(model, loss_fn)
    for lq, gt in stream(1, n=6):
        loss = loss_fn(model(lq), gt)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        sched.step()
    return sched.history


@pytest.mark.slow
def test_bf16_autocast_s0_equals_fp32_and_every_stage_is_scored_in_float32():
    fp32 = _run_fp32()
    model, loss_fn = make_net(), al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    dtypes: list[tuple[bool, torch.dtype]] = []  # (training, output dtype) of every forward of the first conv
    model.body[0].register_forward_hook(lambda m, i, o: dtypes.append((m.training, o.dtype)))
    by_hand: list[dict] = []
    sched = scheduler(model, loss_fn, callbacks=[lambda rec: by_hand.append(fp32_scores(model))])
    run_doc_block("bf16", {"loader": stream(1, n=6), "model": model, "loss_fn": loss_fn, "optimizer": optimizer,
                          "sched": sched, "torch": torch})
    bf16 = sched.history
    assert [r.stage for r in bf16] == [0, 1, 2, 3]
    # S0 was scored from the pre-hook inside autocast, yet it equals the fp32 run's S0.
    assert rel_close(bf16[0].scores, fp32[0].scores)
    assert {d for training, d in dtypes if training} == {torch.bfloat16}  # autocast was on in training ...
    probe_dtypes = [d for training, d in dtypes if not training]
    assert probe_dtypes == [torch.float32] * len(PROBE) * 4  # ... and off at every probe restoration, S0 included
    # The check can fail: the same probe restored under bf16 autocast scores differently.
    model0 = make_net().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [model0(p.unsqueeze(0)).float().clamp(0, 1) for p in PROBE]
    under_autocast = {o.name: o.score(outs).mean for o in objectives()}
    assert not rel_close(under_autocast, fp32[0].scores)
    # Every later stage: the scores are those of a float32 restoration of the model at that stage end.
    for rec, hand in zip(bf16, by_hand):
        assert rel_close(rec.scores, hand), rec.stage
    # ... even when the stage end itself runs inside autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = sched.end_stage()
    assert rel_close(rec.scores, fp32_scores(model))


# -- fp16 + GradScaler ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_fp16_grad_scaler_runs_three_stages_and_trials_put_the_scaler_back():
    model, loss_fn = make_net(), al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    # growth_interval=1: the scale moves at every step, so a trial that leaked would show.
    scaler = torch.amp.GradScaler("cpu", growth_interval=1)
    ns = {"torch": torch, "agentloss": al, "optimizer": optimizer, "trial_batches": stream(2), "scaler": scaler}
    run_doc_block("fp16", ns)
    trials, amp_step = ns["trials"], ns["amp_step"]
    scales_in_trials: list[float] = []

    def watched(*a):
        amp_step(*a)
        scales_in_trials.append(scaler.get_scale())

    trials.step_fn = watched
    agent = TryTwo(watch=scaler.state_dict)
    sched = scheduler(model, loss_fn, agent=agent, trials=trials)
    scales = []
    for lq, gt in stream(1, n=6):
        amp_step(model, loss_fn, optimizer, (lq, gt)); sched.step()
        scales.append(scaler.get_scale())
    assert [r.stage for r in sched.history] == [0, 1, 2, 3]
    assert not any(r.fallback or r.errors or r.warnings for r in sched.history[1:])
    assert len(agent.seen) == 2  # stages 1 and 2 (the final stage asks no agent)
    for scores, before, after in agent.seen:
        assert scores[0] != scores[1]
        assert after == before  # the scaler's state is what it was before the trials
    assert len(set(scales_in_trials)) > 1  # ... although the trials moved it
    assert len(set(scales)) > 1 and all(s > 0 for s in scales)


# -- torch.compile ---------------------------------------------------------------------------------------
def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.mark.slow
@pytest.mark.parametrize("probe_with", ["compiled", "orig_mod"])
def test_torch_compile_stage_ends_do_not_recompile(probe_with):
    # aot_eager: Dynamo's guards and recompiles are the same as with inductor, without its C++ builds
    # (tens of seconds per graph on this CPU).
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    net = make_net()
    model = torch.compile(net, backend="aot_eager")
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    trials = al.SnapshotTrials(optimizer, stream(2), steps=2)
    probe_imgs = [PROBE[0], PROBE[1, :, :12, :]]  # two sizes: the probe may differ from the batches
    graphs = {}
    sched = al.StageScheduler(loss_fn, TryTwo(), objectives(), model if probe_with == "compiled" else model._orig_mod,
                              probe_imgs, stage_length=2, total_stages=3, trials=trials,
                              callbacks=[lambda rec: graphs.__setitem__(rec.stage, _graphs())])
    for lq, gt in stream(1, n=6):
        loss = loss_fn(model(lq), gt)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        sched.step()
    assert sorted(graphs) == [0, 1, 2, 3]
    # Nothing compiled after S0: not at stage ends 1-3 (probe and trials included), not back in training.
    assert graphs[0] == graphs[1] == graphs[3] == _graphs()
    if probe_with == "compiled":
        assert graphs[3] <= 3  # training, the probe's no-grad graph, one more for its second image size
    else:
        assert graphs[3] == 1  # the probe ran the original module: only the training graph


# -- EMA -----------------------------------------------------------------------------------------------
def _ema_run(ema_of, restore_fn=None, n=4):
    model, loss_fn = make_net(), al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    ema = ema_of(model)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    trials = al.SnapshotTrials(optimizer, stream(2), steps=3, ema=ema)
    agent = TryTwo(watch=ema.state_dict)
    seen_by_restore = []

    def rfn(m, x):
        seen_by_restore.append(m)
        return restore_fn(m, x)

    sched = al.StageScheduler(loss_fn, agent, objectives(), model, PROBE, stage_length=2, total_stages=3,
                              probe_model=ema, trials=trials, restore_fn=rfn if restore_fn else None)
    update = getattr(ema, "update_parameters", None) or ema.update
    by_hand = []
    sched.callbacks.append(lambda rec: by_hand.append(
        {o.name: o.score(restore(ema, sched.probe, restore_fn)).mean for o in objectives()}))
    for lq, gt in stream(1, n=n):
        loss = loss_fn(model(lq), gt)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        update(model)
        sched.step()
    return sched, agent, model, ema, by_hand, seen_by_restore


def _averaged(model):
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.5))


def _timm_ema(model):
    timm_utils = pytest.importorskip("timm.utils")
    return timm_utils.ModelEmaV3(model, decay=0.5)


@pytest.mark.parametrize("ema_of", [_averaged, _timm_ema], ids=["AveragedModel", "timm-ModelEmaV3"])
def test_snapshot_trials_update_the_ema_and_put_it_back(ema_of):
    sched, agent, model, _, by_hand, _ = _ema_run(ema_of)
    assert [r.stage for r in sched.history] == [0, 1, 2]
    assert not sched.history[1].warnings  # the probe read what the trials trained
    assert len(agent.seen) == 2  # stages 1 and 2
    for scores, before, after in agent.seen:
        assert scores[0] != scores[1]
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for rec, hand in zip(sched.history, by_hand):  # the EMA is what was scored, at every stage end
        assert rec.scores == hand
    assert sched.history[-1].scores != fp32_scores(model)  # ... not the raw model


def test_ema_probe_model_with_a_restore_fn():
    def halves(m, x):  # a restore_fn of its own (two half-width tiles), run with the EMA
        w = x.shape[-1] // 2
        return torch.cat([m(x[..., :w]), m(x[..., w:])], dim=-1)

    sched, agent, _, ema, by_hand, seen = _ema_run(_averaged, restore_fn=halves)
    assert seen and all(m is ema for m in seen)
    assert [r.scores for r in sched.history] == by_hand
    assert agent.seen[0][0][0] != agent.seen[0][0][1]


def test_snapshot_trials_refuse_an_ema_they_cannot_update():
    model = make_net()
    with pytest.raises(TypeError, match="update_parameters"):
        al.SnapshotTrials(torch.optim.SGD(model.parameters(), 0.1), stream(2), ema=copy.deepcopy(model))
