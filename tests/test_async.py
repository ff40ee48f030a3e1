"""Asynchronous decisions: training goes on while the agent thinks; the semantics stay exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import agentloss as al
from agentloss.records import read_records


class SlowRandom(al.RandomAgent):
    """A RandomAgent that takes ``delay`` seconds (or waits for ``gate``) and counts overlapping calls."""

    def __init__(self, delay: float = 0.0, seed: int = 0, gate: threading.Event | None = None):
        super().__init__(seed=seed)
        self.delay, self.gate, self.active, self.max_active, self.calls = delay, gate, 0, 0, 0

    def propose(self, context):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.calls += 1
        try:
            if self.gate is not None:
                self.gate.wait()
            time.sleep(self.delay)
            return super().propose(context)
        finally:
            self.active -= 1


class Raising(al.FixedAgent):
    thread_safe = True

    def propose(self, context):
        raise RuntimeError("backend down")


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    mean = al.CallableObjective(lambda x: float(x.mean()), name="mean", higher_is_better=True)
    return model, loss_fn, opt, mean


def _train(sched, model, loss_fn, opt, steps, step_time=0.0, weights_log=None, gen=None):
    gen = gen or torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand(2, 3, 8, 8, generator=gen)
        loss = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if weights_log is not None:
            weights_log.append(dict(loss_fn.weights))
        if step_time:
            time.sleep(step_time)
    return gen


def _sched(model, loss_fn, mean, agent, **kw):
    kw.setdefault("stage_length", 5)
    probe = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    return al.StageScheduler(loss_fn, agent, [mean], model, probe, asynchronous=True, **kw)


def _essence(records):
    return [(r.stage, r.iteration, r.applied_iteration, r.weights, r.next_weights, r.scores, r.fallback)
            for r in records]


def test_asap_training_goes_on_while_the_agent_thinks():
    model, loss_fn, opt, mean = _parts()
    agent = SlowRandom(delay=0.15)
    sched = _sched(model, loss_fn, mean, agent, stage_length=10, total_stages=3)
    weights = []
    _train(sched, model, loss_fn, opt, 30, step_time=0.03, weights_log=weights)
    records = sched.history
    assert [r.stage for r in records] == [0, 1, 2, 3]
    for r in records[1:3]:
        # asked at the stage end, applied a few steps later (0.15 s / 0.03 s per step), inside the stage
        assert r.iteration < r.applied_iteration <= r.iteration + 10
        assert r.timings["stall_s"] < r.timings["agent_s"]  # the loop stood still to score, not to decide
        assert weights[r.applied_iteration - 1] == r.next_weights  # in force from that step on
        assert weights[r.applied_iteration - 2] == r.weights if r.applied_iteration - 2 >= r.iteration else True
    assert records[2].weights == records[1].next_weights
    assert records[2].decision.seen_stages == [0, 1, 2]  # asked at stage end 2, knowing stages 0-2
    assert records[3].decision.skipped and records[3].applied_iteration is None  # the last stage asks nothing
    assert agent.max_active == 1


def test_next_stage_is_reproducible_whatever_the_latency():
    runs = []
    for delays in ([0.0, 0.0, 0.0], [0.2, 0.01, 0.12]):
        model, loss_fn, opt, mean = _parts()

        class Varying(SlowRandom):
            def propose(self, context, _d=iter(delays)):
                self.delay = next(_d)
                return super().propose(context)

        sched = _sched(model, loss_fn, mean, Varying(), stage_length=4, total_stages=4, apply_at="next_stage")
        weights = []
        _train(sched, model, loss_fn, opt, 16, step_time=0.01, weights_log=weights)
        runs.append((_essence(sched.history), weights))
    assert runs[0] == runs[1]
    records = runs[0][0]
    assert [r[2] for r in records[1:4]] == [8, 12, 16]  # applied exactly one stage after being asked
    assert records[2][3] == records[0][4]  # stage 2 still trained with the weights in force at stage end 1


def test_a_stage_end_waits_for_the_previous_answer_and_records_the_wait():
    model, loss_fn, opt, mean = _parts()
    agent = SlowRandom(delay=2.0)  # far longer than 3 tiny steps, even on a loaded machine
    sched = _sched(model, loss_fn, mean, agent, stage_length=3, total_stages=3)
    _train(sched, model, loss_fn, opt, 9)
    assert agent.max_active == 1
    assert sched.history[2].timings["wait_s"] > 0.5  # stage end 2 waited for stage end 1's answer
    assert sched.history[1].applied_iteration == 6
    assert sched.history[1].next_weights != sched.history[1].weights


def test_an_agent_that_raises_is_a_recorded_fallback():
    model, loss_fn, opt, mean = _parts()
    sched = _sched(model, loss_fn, mean, Raising(), total_stages=3)
    _train(sched, model, loss_fn, opt, 15)
    for r in sched.history[1:3]:
        assert r.fallback.startswith("agent raised RuntimeError: backend down")
        assert "RuntimeError" in r.decision.traceback
        assert r.next_weights == {"l1": 1.0, "mse": 1.0}


def test_a_hung_agent_is_abandoned_after_the_timeout(tmp_path):
    model, loss_fn, opt, mean = _parts()
    gate = threading.Event()  # never set: the agent hangs
    sched = _sched(model, loss_fn, mean, SlowRandom(gate=gate), stage_length=3, total_stages=3,
                   decision_timeout=0.3, run_dir=tmp_path)
    t = time.perf_counter()
    _train(sched, model, loss_fn, opt, 9)
    assert time.perf_counter() - t < 5
    r1 = sched.history[1]
    assert "did not answer within decision_timeout=0.3 s" in r1.fallback
    assert r1.next_weights == r1.weights
    assert [r.stage for r in read_records(tmp_path)] == [0, 1, 2, 3]
    gate.set()


def test_an_answer_after_training_has_ended_is_dropped_and_recorded(tmp_path):
    model, loss_fn, opt, mean = _parts()
    gate = threading.Event()
    with _sched(model, loss_fn, mean, SlowRandom(gate=gate), stage_length=3, run_dir=tmp_path) as sched:
        _train(sched, model, loss_fn, opt, 4)
    last = read_records(tmp_path)[-1]
    assert last.stage == 1 and "training ended before the agent answered" in last.fallback
    gate.set()
    time.sleep(0.05)
    assert loss_fn.weights == {"l1": 1.0, "mse": 1.0}  # the late answer changed nothing


def test_agents_not_marked_thread_safe_are_refused():
    class Mine(al.agents.BaseAgent):
        def propose(self, context):
            return al.Decision(weights=dict(context.current_weights))

    model, loss_fn, opt, mean = _parts()
    with pytest.raises(ValueError, match="thread_safe = True"):
        _sched(model, loss_fn, mean, Mine())
    with pytest.raises(ValueError, match="apply_at"):
        _sched(model, loss_fn, mean, al.FixedAgent(), apply_at="later")


def test_trials_keep_decisions_synchronous_and_their_time_is_recorded():
    model, loss_fn, opt, mean = _parts()

    class TryTwo(al.RandomAgent):
        def propose(self, context):
            context.trial([{"l1": 1.0, "mse": 0.5}, {"l1": 0.5, "mse": 1.0}], 2)
            return super().propose(context)

    g = torch.Generator().manual_seed(3)
    trials = al.SnapshotTrials(opt, iter(lambda: (torch.rand(2, 3, 8, 8, generator=g),) * 2, None), steps=2)
    sched = _sched(model, loss_fn, mean, TryTwo(seed=0), trials=trials, total_stages=2)
    _train(sched, model, loss_fn, opt, 10)
    r = sched.history[1]
    assert r.applied_iteration is None and r.timings["trial_s"] > 0 and r.next_weights != r.weights


def _checkpoint(model, opt, sched, gen):
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
            "sched": json.loads(json.dumps(sched.state_dict())), "gen": gen.get_state(), "rng": torch.get_rng_state()}


def test_resume_while_a_decision_is_in_flight_equals_the_uninterrupted_run():
    kw = dict(stage_length=4, total_stages=4, apply_at="next_stage")
    model, loss_fn, opt, mean = _parts()
    sched = _sched(model, loss_fn, mean, SlowRandom(delay=0.05, seed=7), **kw)
    _train(sched, model, loss_fn, opt, 16)
    expected = _essence(sched.history), dict(loss_fn.weights)

    model, loss_fn, opt, mean = _parts()
    sched = _sched(model, loss_fn, mean, SlowRandom(delay=0.3, seed=7), **kw)
    gen = _train(sched, model, loss_fn, opt, 6)  # stage end 1 at step 4: its decision is in flight
    ckpt = _checkpoint(model, opt, sched, gen)
    assert ckpt["sched"]["pending"]["record"]["stage"] == 1

    model, loss_fn, opt, mean = _parts(seed=99)  # a new process: everything rebuilt, then loaded
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched = _sched(model, loss_fn, mean, SlowRandom(delay=0.0, seed=123), **kw)
    sched.load_state_dict(ckpt["sched"])
    gen = torch.Generator()
    gen.set_state(ckpt["gen"])
    torch.set_rng_state(ckpt["rng"])
    _train(sched, model, loss_fn, opt, 10, gen=gen)
    assert (_essence(sched.history), dict(loss_fn.weights)) == expected


def test_keyboard_interrupt_while_waiting_leaves_records_intact_and_resumable(tmp_path):
    model, loss_fn, opt, mean = _parts()
    gate = threading.Event()
    kw = dict(stage_length=3, total_stages=3, run_dir=tmp_path)
    sched = _sched(model, loss_fn, mean, SlowRandom(gate=gate, seed=1), **kw)
    gen = _train(sched, model, loss_fn, opt, 4)
    ckpt = _checkpoint(model, opt, sched, gen)  # taken while stage end 1's decision is in flight

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            _train(sched, model, loss_fn, opt, 5, gen=gen)  # stage end 2 waits for the hung answer
    finally:
        signal.signal(signal.SIGALRM, old)
    assert sched.iteration == 6 and sched.stage == 1  # interrupted in the wait: nothing half-done
    assert [r.stage for r in read_records(tmp_path)] == [0]
    assert sched.state_dict()["pending"]["record"]["stage"] == 1
    gate.set()

    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched2 = _sched(model, loss_fn, mean, SlowRandom(seed=1), **kw)
    sched2.load_state_dict(ckpt["sched"])
    gen.set_state(ckpt["gen"])
    _train(sched2, model, loss_fn, opt, 5, gen=gen)
    records = read_records(tmp_path)
    assert [r.stage for r in records] == [0, 1, 2, 3] and records[1].applied_iteration is not None


def test_the_process_exits_cleanly_with_a_hung_worker(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(
        "import threading, torch, agentloss as al\n"
        "class Hang(al.FixedAgent):\n"
        "    def propose(self, ctx):\n"
        "        threading.Event().wait()\n"
        "m = torch.nn.Conv2d(3, 3, 1); lf = al.AgentWeightedLoss({'l1': 1.0})\n"
        "o = al.CallableObjective(lambda x: float(x.mean()), name='mean', higher_is_better=True)\n"
        "s = al.StageScheduler(lf, Hang(), [o], m, torch.rand(1, 3, 8, 8), stage_length=2, asynchronous=True)\n"
        "for _ in range(3):\n"
        "    lf(m(torch.rand(1, 3, 8, 8)), torch.rand(1, 3, 8, 8)).backward(); s.step()\n"
        "print('done', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("apply_at", ["asap", "next_stage"])
def test_torchrun_two_ranks_apply_the_weights_at_the_same_step(tmp_path, apply_at):
    script = Path(__file__).parent / "scripts" / "async_ddp.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(29500 + (os.getpid() % 1000)), str(script), str(tmp_path), apply_at],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["per_step"] == r1["per_step"]  # the same weights at every optimizer step on both ranks
    assert r0["history"] == r1["history"]
    applied = [r["applied_iteration"] for r in r0["history"][1:3]]
    assert all(a is not None for a in applied) and r0["per_step"][-1] != {"l1": 1.0, "mse": 1.0}
    if apply_at == "next_stage":
        assert applied == [40, 60]


def test_show_prints_the_stall_the_wait_and_the_applied_step(tmp_path, capsys):
    from agentloss.cli import main

    model, loss_fn, opt, mean = _parts()
    sched = _sched(model, loss_fn, mean, SlowRandom(delay=0.2), stage_length=3, total_stages=3, run_dir=tmp_path,
                   apply_at="next_stage")
    _train(sched, model, loss_fn, opt, 9)
    assert main(["show", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(h in lines[0] for h in ("stall s", "wait s", "applied"))
    assert lines[2].split()[-1] == "6"  # stage 1's answer applied at stage end 2


def test_a_task_config_runs_asynchronously_and_resumes_exactly(tmp_path, crash_and_resume):
    base = {"task": "cisr", "backbone": {"name": "small_sr", "scale": 2, "options": {"width": 8, "depth": 1}},
            "losses": {"l1": 1.0, "fft": 0.1}, "objectives": [{"name": "psnr"}], "agent": {"type": "random"},
            "train": {"stage_length": 2, "total_iters": 8, "asynchronous": True, "apply_at": "next_stage"},
            "data": {"patch": 32, "batch": 2}, "probe": {"count": 1, "size": 64},
            "eval": {"size": 64, "max_images": 1}, "out": str(tmp_path)}
    whole, resumed = crash_and_resume(base)
    assert [r.applied_iteration for r in whole.history] == [None, 4, 6, 8, None]
    assert _essence(resumed.history) == _essence(whole.history)
    assert resumed.evaluation == whole.evaluation
