"""agentloss.integrations.hf_trainer with the real transformers Trainer (CPU, a tiny conv net, 16x16 crops)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
from transformers import Trainer, TrainerCallback, TrainingArguments

import agentloss as al
from tests.trial_agents import KeepingTrialAgent
from agentloss.integrations.hf_trainer import (
    AgentLossTrainer,
    AgentLossTrainerCallback,
)

STAGE = 3
STAGES = 3


class TinyNet(nn.Module):
    """A residual two-conv denoiser: output = input + correction."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


class NoisyCrops(Dataset):
    """Item i: a 16x16 crop of a built-in photo and its noisy copy, a pure function of i."""

    def __init__(self, n: int = 12, photo: torch.Tensor | None = None):
        from agentloss.data import builtin_photos

        self.photo = builtin_photos(["chelsea"])[0] if photo is None else photo
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + i)
        y, x = (int(torch.randint(0, s - 16, (1,), generator=g)) for s in self.photo.shape[-2:])
        gt = self.photo[:, y:y + 16, x:x + 16]
        lq = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
        return {"lq": lq, "gt": gt}


def probe() -> tuple[torch.Tensor, torch.Tensor]:
    items = [NoisyCrops(40)[i] for i in (30, 31, 32)]
    return torch.stack([d["lq"] for d in items]), torch.stack([d["gt"] for d in items])


def objectives() -> list[al.Objective]:
    def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
        return float(-10 * torch.log10(((x - ref) ** 2).mean()))

    return [al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True),
            al.CallableObjective(psnr, name="psnr", higher_is_better=True, needs_reference=True)]


def make_loss(gan: bool = False) -> al.AgentWeightedLoss:
    if gan:
        torch.manual_seed(7)  # the discriminator's initial weights (a resumed run must load the trained ones)
        return al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0, "gan": 0.05}, terms={"gan": {"width": 8, "depth": 1}})
    return al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})


def make_callback(agent_seed: int = 0, **kw) -> AgentLossTrainerCallback:
    lq, gt = probe()
    return AgentLossTrainerCallback(agent=al.RandomAgent(seed=agent_seed), objectives=objectives(), probe=lq,
                                    probe_references=gt, stage_length=STAGE, **kw)


def make_args(out: Path, max_steps: int = STAGE * STAGES, **kw) -> TrainingArguments:
    base = {"max_steps": max_steps, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "use_cpu": True,
            "report_to": "none", "save_strategy": "steps", "save_steps": STAGE, "logging_steps": 1,
            "dataloader_num_workers": 0, "seed": 0, "remove_unused_columns": False, "disable_tqdm": True}
    return TrainingArguments(str(out), **{**base, **kw})


class Killed(Exception):
    pass


class KillAfterSave(TrainerCallback):
    """Dies right after the checkpoint of ``step`` is written, like a process killed there."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def agentloss_logs(trainer: Trainer, key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in trainer.state.log_history if key in e]


def test_three_stages_record_at_stage_ends_log_to_history_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    torch.manual_seed(0)
    model, loss_fn, cb = TinyNet(), make_loss(), make_callback()
    args = make_args(tmp_path, report_to=["tensorboard"])
    trainer = AgentLossTrainer(model=model, args=args, train_dataset=NoisyCrops(), loss_fn=loss_fn, callbacks=[cb])
    trainer.train()
    hist = cb.scheduler.history
    assert [(r.stage, r.iteration) for r in hist] == [(0, 0), (1, 3), (2, 6), (3, 9)]
    assert trainer.state.global_step == 9
    # RandomAgent moved the weights; each stage trained with what the previous one decided
    assert hist[1].next_weights != hist[0].weights and hist[2].next_weights != hist[1].next_weights
    assert all(hist[i].weights == hist[i - 1].next_weights for i in range(1, 4))
    assert hist[3].decision.skipped and loss_fn.weights == hist[3].next_weights == hist[2].next_weights
    assert hist[3].scores["psnr"] != hist[0].scores["psnr"]  # the model trained between the scorings
    assert torch.isfinite(torch.tensor(trainer.evaluate(NoisyCrops(4))["eval_loss"]))  # evaluate() works too
    # the Trainer's logs hold every stage end at its global step, with the weights in force from there on
    assert agentloss_logs(trainer, "agentloss/weight/l1") == [(r.iteration, r.next_weights["l1"]) for r in hist]
    assert [s for s, _ in agentloss_logs(trainer, "agentloss/score/contrast")] == [0, 3, 6, 9]
    assert agentloss_logs(trainer, "agentloss/fallback") == [(s, 0.0) for s in (0, 3, 6, 9)]
    assert [s for s, _ in agentloss_logs(trainer, "agentloss/agent_s")] == [3, 6]  # no agent for S0 or the last
    # ... and TensorBoard (report_to) got them as scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/agentloss/weight/mse")] == \
        [(r.iteration, r.next_weights["mse"]) for r in hist]
    # records on disk, and the scheduler's state in each checkpoint's trainer_state.json (plain JSON)
    assert [r.stage for r in al.read_records(tmp_path / "agentloss")] == [0, 1, 2, 3]
    saved = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["AgentLossTrainerCallback"]["agentloss"]["scheduler"]
    assert state["iteration"] == 6 and [r["next_weights"] for r in state["history"]] == \
        [r.next_weights for r in hist[:3]]


@pytest.mark.slow
def test_gradient_accumulation_one_scheduler_step_per_optimizer_step_with_your_own_trainer(tmp_path):
    """The documented pattern for your own Trainer subclass: its compute_loss calls loss_fn; the callback gets
    loss_fn= and is attached (so its logs go through Trainer.log)."""
    torch.manual_seed(0)
    loss_fn = make_loss()
    calls, seen = [], []

    class MyTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(self.state.global_step)
            pred = model(inputs["lq"])
            loss = loss_fn(pred, inputs["gt"])
            return (loss, pred) if return_outputs else loss

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((state.global_step, cb.scheduler.iteration, len(cb.scheduler.history)))

    cb = make_callback(loss_fn=loss_fn)
    args = make_args(tmp_path, max_steps=6, gradient_accumulation_steps=2, save_strategy="no")
    trainer = MyTrainer(model=TinyNet(), args=args, train_dataset=NoisyCrops(), callbacks=[cb, Watch()])
    cb.attach(trainer)
    trainer.train()
    assert len(calls) == 12  # two micro-batches per optimizer step ...
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6]  # ... and one scheduler step per optimizer step
    assert all(step == it for step, it, _ in seen)
    assert [n for _, _, n in seen] == [1, 1, 2, 2, 2, 3]  # a stage ends every 3 optimizer steps
    assert [(r.stage, r.iteration) for r in cb.scheduler.history] == [(0, 0), (1, 3), (2, 6)]
    assert [s for s, _ in agentloss_logs(trainer, "agentloss/weight/l1")] == [0, 3, 6]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    torch.manual_seed(0)
    model, loss_fn, cb = TinyNet(), make_loss(gan=True), make_callback()
    trainer = AgentLossTrainer(model=model, args=make_args(out), train_dataset=NoisyCrops(), loss_fn=loss_fn,
                               callbacks=[cb])
    trainer.train()
    return trainer, cb


def same(a, b) -> bool:
    """Exact equality of nested state (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _essentials(r: al.StageRecord) -> tuple:
    return (r.stage, r.iteration, r.weights, r.next_weights, r.scores, r.per_image, r.fallback,
            r.decision.proposed if r.decision else None)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at,restore_flag,form", [(3, False, "built"), (6, True, "built"),
                                                       (3, True, "scheduler")])
def test_killed_and_resumed_in_a_new_trainer_equals_the_uninterrupted_run(tmp_path, uninterrupted, kill_at,
                                                                          restore_flag, form):
    whole_trainer, whole_cb = uninterrupted
    lq, gt = probe()

    def fresh(model_seed: int, agent_seed: int):
        # a new process: new model, loss (and discriminator), agent and callback; only the checkpoint carries over
        model, loss_fn = TinyNet(model_seed), make_loss(gan=True)
        if form == "built":
            cb = make_callback(agent_seed=agent_seed)
        else:
            sched = al.StageScheduler(loss_fn, al.RandomAgent(seed=agent_seed), objectives(), model, lq,
                                      probe_references=gt, stage_length=STAGE, total_stages=STAGES,
                                      run_dir=tmp_path / "agentloss")
            cb = AgentLossTrainerCallback(sched)
        args = make_args(tmp_path, restore_callback_states_from_checkpoint=restore_flag)
        return AgentLossTrainer(model=model, args=args, train_dataset=NoisyCrops(), loss_fn=loss_fn,
                                callbacks=[cb, KillAfterSave(kill_at)]), cb

    first, _ = fresh(0, 0)
    with pytest.raises(Killed):
        first.train()
    trainer, cb = fresh(5, 123)  # other initial weights and agent seed: everything must come from the checkpoint
    trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{kill_at}"))

    assert any(c is cb for c in trainer.callback_handler.callbacks)  # still our callback (also when the Trainer
    assert trainer.state.global_step == 9                           # rebuilds stateful callbacks)
    assert [_essentials(r) for r in cb.scheduler.history] == [_essentials(r) for r in whole_cb.scheduler.history]
    for a, b in zip(trainer.model.state_dict().values(), whole_trainer.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the discriminator and its optimizer resumed from the checkpoint too
    assert same(trainer.loss_fn.terms["gan"].state_dict(), whole_trainer.loss_fn.terms["gan"].state_dict())
    assert trainer.loss_fn.weights == whole_trainer.loss_fn.weights
    key = "agentloss/weight/gan"
    assert agentloss_logs(trainer, key) == agentloss_logs(whole_trainer, key)  # S0 not logged twice
    assert [r.stage for r in al.read_records(tmp_path / "agentloss")] == [0, 1, 2, 3]


def test_bad_set_ups_fail_before_any_training_step(tmp_path):
    calls = []

    class Counting(AgentLossTrainer):
        def compute_loss(self, *a, **kw):
            calls.append(1)
            return super().compute_loss(*a, **kw)

    def trainer(cls=Counting, cb=None, **kw):
        return cls(model=TinyNet(), args=make_args(tmp_path, **kw), train_dataset=NoisyCrops(), loss_fn=make_loss(),
                   callbacks=[cb or make_callback()])

    t = trainer(max_steps=2)
    with pytest.raises(ValueError, match="max_steps=2 is shorter than one stage"):
        t.train()
    assert t.state.global_step == 0 and not calls

    class Own(Trainer):  # your own compute_loss, but the callback was given no loss_fn
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            calls.append(1)
            return nn.functional.l1_loss(model(inputs["lq"]), inputs["gt"])

    t = Own(model=TinyNet(), args=make_args(tmp_path), train_dataset=NoisyCrops(), callbacks=[make_callback()])
    with pytest.raises(TypeError, match="no AgentWeightedLoss found"):
        t.train()
    assert t.state.global_step == 0 and not calls

    lq, _ = probe()
    with pytest.raises(al.ProbeError, match=r"\['psnr'\] need references: pass probe_references="):
        AgentLossTrainerCallback(agent=al.RandomAgent(), objectives=objectives(), probe=lq, stage_length=STAGE)
    with pytest.raises(TypeError, match="missing \\['probe', 'stage_length'\\]"):
        AgentLossTrainerCallback(agent=al.RandomAgent(), objectives=objectives())
    with pytest.raises(TypeError, match="loss_fn must be an AgentWeightedLoss"):
        AgentLossTrainer(model=TinyNet(), args=make_args(tmp_path), loss_fn=nn.L1Loss())
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer(remove_unused_columns=True)

    # a scheduler built around another model than the Trainer's
    loss_fn, (lq, gt) = make_loss(), probe()
    sched = al.StageScheduler(loss_fn, al.RandomAgent(), objectives(), TinyNet(), lq, probe_references=gt,
                              stage_length=STAGE)
    t = Counting(model=TinyNet(), args=make_args(tmp_path), train_dataset=NoisyCrops(), loss_fn=loss_fn,
                 callbacks=[AgentLossTrainerCallback(sched)])
    with pytest.raises(ValueError, match="another model than the one the Trainer trains"):
        t.train()

    # resuming from a checkpoint written without the callback
    plain = Counting(model=TinyNet(), args=make_args(tmp_path / "plain", max_steps=3), train_dataset=NoisyCrops(),
                     loss_fn=make_loss())
    plain.train()
    n = len(calls)
    t = trainer()
    with pytest.raises(ValueError, match="checkpoint holds no state of the AgentLossTrainerCallback"):
        t.train(resume_from_checkpoint=str(tmp_path / "plain" / "checkpoint-3"))
    assert len(calls) == n
    assert not t.loss_fn._forward_pre_hooks  # the scheduler built for it left no S0 hook on the loss


def test_callback_copies_and_refuses_a_json_only_rebuild():
    cb = make_callback()
    twin = copy.deepcopy(cb)
    assert twin is not cb and isinstance(twin, AgentLossTrainerCallback) and type(twin).__name__ == type(cb).__name__
    assert type(cb)() is cb  # how the Trainer rebuilds a stateful callback: it gets this very one
    with pytest.raises(TypeError, match="cannot be rebuilt from a checkpoint's JSON alone"):
        AgentLossTrainerCallback.from_state(cb.state())


def test_asynchronous_decisions_are_logged_when_applied(tmp_path):
    torch.manual_seed(0)
    model, loss_fn = TinyNet(), make_loss()
    cb = make_callback(asynchronous=True, apply_at="next_stage")
    trainer = AgentLossTrainer(model=model, args=make_args(tmp_path), train_dataset=NoisyCrops(), loss_fn=loss_fn,
                               callbacks=[cb])
    trainer.train()
    hist = cb.scheduler.history
    assert [(r.stage, r.iteration, r.applied_iteration) for r in hist] == [(0, 0, None), (1, 3, 6), (2, 6, 9),
                                                                           (3, 9, None)]
    # each record logged once, at the step its weights took effect
    assert agentloss_logs(trainer, "agentloss/weight/l1") == [(0, 1.0), (6, hist[1].next_weights["l1"]),
                                                              (9, hist[2].next_weights["l1"]),
                                                              (9, hist[3].next_weights["l1"])]


def _trial_run(out: Path, trials: int):
    torch.manual_seed(0)
    model, loss_fn, agent = TinyNet(), make_loss(gan=True), KeepingTrialAgent(trials)
    extra = {"trial_batches": torch.utils.data.DataLoader(NoisyCrops(6), batch_size=2)} if trials else {}
    lq, gt = probe()
    cb = AgentLossTrainerCallback(agent=agent, objectives=objectives(), probe=lq, probe_references=gt,
                                  stage_length=STAGE, **extra)
    trainer = AgentLossTrainer(model=model, args=make_args(out, save_strategy="no", max_grad_norm=0.5),
                               train_dataset=NoisyCrops(), loss_fn=loss_fn, callbacks=[cb])
    trainer.train()
    return model, loss_fn, agent, cb, trainer


@pytest.mark.slow
def test_snapshot_trials_through_the_trainer_leave_training_as_it_was(tmp_path):
    model, loss_fn, agent, cb, trainer = _trial_run(tmp_path / "a", trials=1)
    plain, plain_loss, _, _, plain_trainer = _trial_run(tmp_path / "b", trials=0)
    # 2 decisions (none after the last stage), each 2 candidates x 3 trial steps, measured and different.
    assert len(agent.measured) == 2 and all(a != b for a, b in agent.measured)
    assert cb.scheduler.trials.iterations == 2 * 2 * 3 and trainer.state.global_step == STAGE * STAGES
    # The run itself is untouched: the same logged losses, model, discriminator and its optimizer.
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert losses == [(e["step"], e["loss"]) for e in plain_trainer.state.log_history if "loss" in e]
    assert same(model.state_dict(), plain.state_dict()) and same(loss_fn.state_dict(), plain_loss.state_dict())


def test_trials_through_the_trainer_fail_before_training_when_miswired(tmp_path):
    lq, gt = probe()
    common = {"objectives": objectives(), "probe": lq, "probe_references": gt, "stage_length": STAGE}
    with pytest.raises(ValueError, match="trial_batches=<a DataLoader"):
        AgentLossTrainerCallback(agent=KeepingTrialAgent(1), **common)
    with pytest.raises(ValueError, match="asks for no trials"):
        AgentLossTrainerCallback(agent=al.RandomAgent(seed=0), trial_batches=[{}], **common)
    cb = AgentLossTrainerCallback(agent=KeepingTrialAgent(1), trial_batches=[{}], **common)
    model = TinyNet()
    trainer = Trainer(model=model, args=make_args(tmp_path, save_strategy="no"), train_dataset=NoisyCrops(),
                      callbacks=[cb], compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.mean())
    with pytest.raises((ValueError, TypeError), match="attach|AgentWeightedLoss"):
        trainer.train()
