"""Failures that must never stop or silently corrupt training: lost record writes, divergence, runaway
answers and templates, names the answer format cannot carry, autocast around the first forward."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import agentloss as al
from agentloss.agents.asking import MAX_STORED_CHARS, ask
from agentloss.backends.base import ChatResult
from agentloss.prompts import PromptTemplateError, PromptTemplates
from agentloss.records import read_records


def _setup(tmp_path, agent=None, **kw):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    obj = al.CallableObjective(lambda x: x.mean().item(), name="mean", higher_is_better=True)
    sched = al.StageScheduler(loss_fn, agent or al.RandomAgent(seed=0), [obj], model, torch.rand(2, 3, 8, 8),
                              stage_length=2, run_dir=tmp_path, **kw)
    opt = torch.optim.SGD(model.parameters(), 0.01)

    def train(n, poison=False):
        for _ in range(n):
            x = torch.rand(1, 3, 8, 8)
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if poison:
                with torch.no_grad():
                    model.weight.fill_(float("nan"))
            sched.step()

    return model, loss_fn, sched, train


def test_a_failed_record_write_keeps_training_and_writes_the_backlog_later(tmp_path):
    _, _, sched, train = _setup(tmp_path)
    train(2)
    path = tmp_path / "stages.jsonl"
    path.unlink()
    path.mkdir()  # the file replaced by a directory: every append fails
    train(4)
    assert [r.stage for r in sched.history] == [0, 1, 2, 3] and len(sched._unwritten) == 2
    path.rmdir()
    train(2)
    # stages 2 and 3 were kept while writing failed, and are written, in order, once it works again
    assert [r.stage for r in read_records(tmp_path)] == [2, 3, 4]


def test_a_diverged_model_is_detected_recorded_and_keeps_the_weights(tmp_path, caplog):
    _, loss_fn, sched, train = _setup(tmp_path)
    train(2)
    before = dict(loss_fn.weights)
    train(2, poison=True)
    rec = sched.history[-1]
    assert "diverged" in rec.fallback and rec.decision is None and loss_fn.weights == before
    assert any("diverged" in r.message for r in caplog.records if r.levelname == "ERROR")


def test_bf16_autocast_around_the_first_forward_does_not_change_s0(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    probe = torch.rand(2, 3, 16, 16)
    obj = al.CallableObjective(lambda x: x.std().item(), name="std", higher_is_better=True)

    def s0(autocast: bool) -> float:
        loss_fn = al.AgentWeightedLoss({"l1": 1.0})
        sched = al.StageScheduler(loss_fn, al.FixedAgent(), [obj], model, probe, stage_length=5)
        x = torch.rand(1, 3, 16, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss_fn(model(x), x)  # S0 is scored by the pre-hook, inside this context
        return sched.history[0].scores["std"]

    assert s0(True) == pytest.approx(s0(False), rel=1e-6)


def test_a_runaway_answer_is_cut_in_the_record():
    class Huge:
        supports_grammar = False

        def chat(self, messages, **kw):
            return ChatResult("x" * 5_000_000, "stop")

    def read(result):
        raise ValueError("no weights")

    out = ask(Huge(), [{"role": "user", "content": "?"}], read, correction=str, max_tries=2)
    stored = [m["content"] for m in out.exchange if m["role"] == "assistant"]
    assert all(len(s) < MAX_STORED_CHARS + 100 and "more characters not stored" in s for s in stored)


@pytest.mark.parametrize("names", [["l1 loss", "gan"], ["a=b"], ["l1:fft"], ["l1", "L1"], ["1st"], [""]])
def test_loss_names_the_answer_format_cannot_carry_are_refused(names):
    with pytest.raises(al.WeightError):
        al.AgentWeightedLoss({n: 1.0 for n in names}, terms={n: nn.L1Loss() for n in names})


@pytest.mark.parametrize("kwargs", [{"max_weight": True}, {"max_step": "2"}, {"min_weight": None}])
def test_constraints_refuse_values_that_are_not_numbers(kwargs):
    with pytest.raises(ValueError, match="must be a number"):
        al.WeightConstraints(**kwargs)


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}", "{{ 9 ** 99999999 }}", "{% for i in range(9000) %}{{ 'y' * 100 }}{% endfor %}",
])
def test_templates_that_would_hang_or_explode_fail_fast_at_construction(template):
    t = time.perf_counter()
    with pytest.raises(PromptTemplateError):
        PromptTemplates(system=template).check()
    assert time.perf_counter() - t < 2.0


def test_template_files_need_a_template_suffix(tmp_path):
    secret = tmp_path / "environ"
    secret.write_text("OPENAI_API_KEY=sk-secret")
    with pytest.raises(PromptTemplateError, match="must end in"):
        PromptTemplates(system=str(secret))
    with pytest.raises(PromptTemplateError, match="must end in"):
        PromptTemplates(system=secret)
    ok = tmp_path / "system.j2"
    ok.write_text("You tune {{ loss_names | join(', ') }}.")
    assert PromptTemplates(system=ok).render("system", {"loss_names": ["l1"]}) == "You tune l1."


def test_by_default_one_answer_moves_a_weight_at_most_four_times(tmp_path):
    agent = al.FixedAgent({"l1": 1.0, "mse": 10_000.0})  # an answer that revised itself to a huge weight
    _, loss_fn, sched, train = _setup(tmp_path, agent=agent)
    train(2)
    assert loss_fn.weights == {"l1": 1.0, "mse": 4.0} and sched.history[-1].decision.clipped
    unlimited = al.WeightConstraints(max_step=None, max_weight=1e5)  # the paper: one setting away
    assert unlimited.apply({"l1": 1e4}, previous={"l1": 1.0}).weights == {"l1": 1e4}


def test_resume_rebuilds_a_record_the_interrupted_run_lost(tmp_path):
    _, _, sched, train = _setup(tmp_path)
    train(6)
    state = sched.state_dict()
    path = tmp_path / "stages.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the last line cut mid-write
    assert [r.stage for r in read_records(tmp_path)] == [0, 1, 2]
    _, _, again, _ = _setup(tmp_path)
    again.load_state_dict(state)
    assert [r.stage for r in read_records(tmp_path)] == [0, 1, 2, 3]
    assert read_records(tmp_path)[-1] == sched.history[-1]


def test_a_key_pasted_into_api_key_env_is_refused_and_never_written():
    with pytest.raises(ValueError, match="must name an environment variable") as err:
        al.create_backend({"type": "openai", "model": "m", "api_key_env": "sk-proj-abcdef0123456789"})
    assert "sk-proj-abcdef0123456789" not in str(err.value)
    assert al.create_backend({"type": "openai", "model": "m", "api_key_env": "MY_KEY"}).describe()["api_key_env"] == "MY_KEY"
