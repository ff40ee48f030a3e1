"""AgentLossCallback in real Lightning Trainer runs: step counting, bf16, checkpoints, logging, DDP, set-up errors."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

import agentloss as al
from tests.trial_agents import KeepingTrialAgent
from agentloss.integrations.lightning import AgentLossCallback
from agentloss.probe import restore

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's "few workers" and the like


class TinyNet(pl.LightningModule):
    """A residual two-conv denoiser; counts its training steps and notes the autocast state it ran under."""

    def __init__(self, loss: str = "one"):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
        if loss in ("one", "two"):
            self.loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
        if loss == "gan":  # a term with trained state: a discriminator and its own Adam
            self.loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0, "gan": 0.1},
                                                terms={"gan": {"width": 8, "depth": 2}})
        if loss == "two":
            self.other_loss = al.AgentWeightedLoss({"l1": 1.0})
        if loss == "none":
            self.loss_fn = nn.L1Loss()
        self.calls = 0
        self.autocast: tuple[bool, torch.dtype] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)

    def training_step(self, batch, batch_idx):
        self.calls += 1
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        lq, hr = batch
        return self.loss_fn(self(lq), hr)

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=1e-2)  # the discriminator has its own


def data(n: int = 8, batch: int = 2) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(n, 3, 16, 16, generator=g)
    lq = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(lq, hr), batch_size=batch, shuffle=False,
                                       num_workers=0)


def probe(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def mean_objective(**kw) -> al.CallableObjective:
    return al.CallableObjective(lambda x: float(x.mean()), name="mean", higher_is_better=True, **kw)


def trainer(root: Path, callbacks: list, **kw) -> pl.Trainer:
    saving = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    opts = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": saving,
            "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
            "default_root_dir": str(root)}
    return pl.Trainer(callbacks=callbacks, **{**opts, **kw})


def test_stage_ends_count_optimizer_steps_not_batches(tmp_path):
    seen = []
    model = TinyNet()
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=3,
                           callbacks=[lambda r: seen.append((r.iteration, model.calls))])
    t = trainer(tmp_path, [cb], max_steps=9, accumulate_grad_batches=2)
    t.fit(model, data(n=40))
    # 2 batches per optimizer step: a stage of 3 steps is 6 batches; S0 before any batch.
    assert seen == [(0, 0), (3, 6), (6, 12), (9, 18)]
    assert [r.stage for r in cb.history] == [0, 1, 2, 3] and t.global_step == 9
    assert cb.history[-1].next_weights != {"l1": 1.0, "mse": 1.0}  # the agent's answers were applied
    assert model.loss_fn.weights == cb.history[-1].next_weights


def test_a_second_fit_of_the_same_module_continues_the_run(tmp_path):
    model = TinyNet()
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2)
    trainer(tmp_path, [cb], max_steps=4).fit(model, data())
    weights = model.loss_fn.weights
    trainer(tmp_path, [cb], max_steps=2).fit(model, data())  # a new Trainer: its global_step starts at 0 again
    assert [(r.stage, r.iteration) for r in cb.history] == [(0, 0), (1, 2), (2, 4), (3, 6)]  # no second S0
    assert cb.history[3].weights == weights and model.calls == 6


def test_s0_is_scored_before_the_first_step_and_bf16_mixed_does_not_change_it(tmp_path):
    s0 = {}
    for precision in ("32-true", "bf16-mixed"):
        model = TinyNet()
        initial = copy.deepcopy(model)
        cb = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2)
        trainer(tmp_path, [cb], max_steps=2, precision=precision).fit(model, data())
        s0[precision] = cb.history[0].scores["mean"]
        # The initial weights, not those after a step: S0 is scored before the first optimizer step.
        assert s0[precision] == pytest.approx(float(torch.cat(restore(initial, list(probe()))).mean()), rel=1e-6)
        assert model.autocast == ((True, torch.bfloat16) if precision == "bf16-mixed" else (False, model.autocast[1]))
    assert s0["bf16-mixed"] == pytest.approx(s0["32-true"], rel=1e-6)
    # ...which is not vacuous: scored under the training step's bf16 autocast, S0 would differ.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = float(TinyNet()(probe()).float().clamp(0, 1).mean())
    assert abs(under_autocast - s0["32-true"]) > 1e-6 * abs(s0["32-true"])


def test_a_bf16_true_module_is_fed_its_own_dtype(tmp_path):
    s0 = {}
    for precision in ("32-true", "bf16-true"):  # bf16-true turns the parameters themselves into bfloat16
        cb = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2)
        model = TinyNet()
        trainer(tmp_path, [cb], max_steps=2, precision=precision).fit(model, data())
        assert all(r.errors == [] and r.fallback is None for r in cb.history)
        s0[precision] = cb.history[0].scores["mean"]
    assert next(model.parameters()).dtype == torch.bfloat16
    assert s0["bf16-true"] == pytest.approx(s0["32-true"], rel=1e-2)


def _resume_run(root: Path, crash_at: int | None = None, ckpt: str | None = None, saver: str = "model_checkpoint"):
    pl.seed_everything(0, verbose=False)
    model = TinyNet(loss="gan")
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2, total_stages=3,
                           run_dir=root / "run")
    # One stage is one epoch (4 batches, 2 per step): a plain DataLoader restarts an interrupted epoch from its
    # start, so checkpoints at stage ends are where Lightning itself resumes exactly.
    if saver == "model_checkpoint":  # Lightning runs ModelCheckpoint after the other callbacks' hooks
        callbacks = [cb, pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, save_top_k=-1)]
    else:  # a checkpoint written before this callback has counted the step that ends the stage
        callbacks = [_SaveAt(2, root / "ckpt" / "epoch=0-step=2.ckpt"), cb]
    if crash_at is not None:
        callbacks.append(_Raise(crash_at))
    trainer(root, callbacks, max_steps=6, accumulate_grad_batches=2).fit(model, data(), ckpt_path=ckpt)
    return model, cb


class _Raise(pl.Callback):
    """Stops the run by an exception in the middle of a stage, as a kill after a checkpoint would."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated kill")


class _SaveAt(pl.Callback):
    def __init__(self, at_step: int, path: Path):
        self.at_step, self.path = at_step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step and not self.path.exists():
            trainer.save_checkpoint(self.path)


def _same(a, b) -> bool:
    """Exact equality through nested dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow
@pytest.mark.parametrize("saver", ["model_checkpoint", "before_the_callback"])
def test_resume_from_a_lightning_checkpoint_equals_the_uninterrupted_run(tmp_path, saver):
    whole, cb_whole = _resume_run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated kill"):
        _resume_run(tmp_path / "crash", crash_at=3, saver=saver)
    ckpt = tmp_path / "crash" / "ckpt" / "epoch=0-step=2.ckpt"
    state = torch.load(ckpt, weights_only=True)  # Lightning's default for local files: the state must load so
    cb_state = state["callbacks"][AgentLossCallback(al.RandomAgent(), [mean_objective()], probe(),
                                                    stage_length=2).state_key]
    sched_state = json.loads(cb_state["scheduler"])
    counted = 2 if saver == "model_checkpoint" else 1  # the other saver ran before the stage end at step 2
    assert cb_state["global_step"] == counted and len(sched_state["history"]) == counted
    # The module's state_dict holds the same weights as the callback's last record.
    assert state["state_dict"]["loss_fn._extra_state"]["weights"] == sched_state["history"][-1]["next_weights"]

    resumed, cb = _resume_run(tmp_path / "crash", ckpt=str(ckpt))
    assert resumed.loss_fn.weights == whole.loss_fn.weights != {"l1": 1.0, "mse": 1.0, "gan": 0.1}
    keys = ("stage", "iteration", "weights", "next_weights", "scores", "per_image", "fallback")
    assert [{k: r.to_dict()[k] for k in keys} for r in cb.history] == \
           [{k: r.to_dict()[k] for k in keys} for r in cb_whole.history]
    assert [r.iteration for r in cb.history] == [0, 2, 4, 6]
    # Every tensor of the module, the discriminator and its Adam state (the loss's extra state) too, exactly.
    assert _same(resumed.state_dict(), whole.state_dict())
    # The resumed run's records file holds every stage once, as the uninterrupted one's.
    on_disk = [r.to_dict() for r in al.read_records(tmp_path / "crash" / "run")]
    assert [(r["stage"], r["next_weights"], r["scores"]) for r in on_disk] == \
           [(r.stage, r.next_weights, r.scores) for r in cb_whole.history]


def test_a_checkpoint_whose_module_weights_disagree_with_the_callback_state_is_refused(tmp_path):
    model = TinyNet()
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    trainer(tmp_path, [cb, saver], max_steps=2).fit(model, data())
    path = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    state = torch.load(path, weights_only=True)
    state["state_dict"]["loss_fn._extra_state"]["weights"] = {"l1": 3.0, "mse": 3.0}
    torch.save(state, path)
    fresh = TinyNet()
    cb2 = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2)
    with pytest.raises(ValueError, match="differ from the agent's last decision"):
        trainer(tmp_path, [cb2], max_steps=4).fit(fresh, data(), ckpt_path=str(path))
    assert fresh.calls == 0


def test_two_callbacks_on_different_losses_do_not_share_a_state_key():
    a = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2, loss_attr="loss_fn")
    b = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2, loss_attr="other_loss")
    c = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=5, loss_attr="loss_fn")
    assert a.state_key != b.state_key and a.state_key == c.state_key  # stable: not an id or a path


def test_stages_are_logged_to_lightnings_logger(tmp_path):
    logger = pl.loggers.CSVLogger(tmp_path, name="csv")
    used = []
    model = TinyNet()
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2,
                           restore_fn=lambda m, x: used.append(m) or m(x))
    trainer(tmp_path, [cb], max_steps=4, logger=logger).fit(model, data())
    assert used and all(m is model for m in used)  # the restore_fn got the LightningModule
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    assert sorted(rows) == [0, 2, 4]
    for rec in cb.history:
        row = rows[rec.iteration]
        assert float(row["agentloss/weight/l1"]) == rec.next_weights["l1"]
        assert float(row["agentloss/weight/mse"]) == rec.next_weights["mse"]
        assert float(row["agentloss/mean"]) == rec.scores["mean"]
        assert float(row["agentloss/fallback"]) == 0.0 and float(row["agentloss/stage"]) == rec.stage
        assert float(row["agentloss/agent_s"]) == rec.timings.get("agent_s", 0.0)
    assert float(rows[2]["agentloss/agent_s"]) > 0  # the agent was asked at stage 1


@pytest.mark.parametrize("case, match", [
    ("no_loss", "has no AgentWeightedLoss attribute"),
    ("two_losses", r"several AgentWeightedLoss attributes \['loss_fn', 'other_loss'\]"),
    ("wrong_attr", "loss_attr='net'.*Sequential, not an AgentWeightedLoss"),
    ("reference_count", "2 probe images but 1 references"),
    ("needs_references", r"objectives \['mean'\] need references"),
    ("max_steps", r"max_steps=3\) ends before the first stage end"),
    ("max_epochs", "takes 4 optimizer steps.*fewer than one stage"),
])
def test_set_up_errors_come_before_any_training_step(tmp_path, case, match):
    model = TinyNet(loss={"no_loss": "none", "two_losses": "two"}.get(case, "one"))
    kw: dict = {"stage_length": 5}
    objective = mean_objective(needs_reference=case == "needs_references")
    if case == "wrong_attr":
        kw["loss_attr"] = "net"
    if case == "reference_count":
        kw["probe_references"] = probe(1)
    cb = AgentLossCallback(al.FixedAgent(), [objective], probe(2), **kw)
    limits = {"max_steps": 3} if case == "max_steps" else {"max_epochs": 1} if case == "max_epochs" else {"max_steps": 10}
    with pytest.raises((TypeError, ValueError), match=match):
        trainer(tmp_path, [cb], **limits).fit(model, data())
    assert model.calls == 0


def test_scheduler_options_pass_through_and_are_checked(tmp_path):
    with pytest.raises(TypeError, match=r"sets \['model'\] itself"):
        AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2, model=nn.Identity())
    with pytest.raises(TypeError, match=r"unknown StageScheduler option\(s\) \['clmap'\]"):
        AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2, clmap=False)
    cb = AgentLossCallback(al.FixedAgent(), [mean_objective()], probe(), stage_length=2, clamp=False)
    trainer(tmp_path, [cb], max_steps=2).fit(TinyNet(), data())
    assert cb.scheduler.clamp is False


def test_asynchronous_decisions_through_the_callback(tmp_path):
    model = TinyNet()
    cb = AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2, total_stages=3,
                           asynchronous=True, apply_at="next_stage")
    trainer(tmp_path, [cb], max_steps=6).fit(model, data())
    # Asked at steps 2 and 4, each answer applied exactly one stage later; the last stage asks nothing.
    assert [r.applied_iteration for r in cb.history[1:]] == [4, 6, None]
    assert model.loss_fn.weights == cb.history[2].next_weights != {"l1": 1.0, "mse": 1.0}


DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch
    import lightning.pytorch as pl
    import agentloss as al
    from agentloss.integrations.lightning import AgentLossCallback
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ddp_net import TinyNet, data, probe

    out = sys.argv[1]
    rank = int(os.environ.get("LOCAL_RANK", 0))
    calls = []
    def score(x):
        calls.append(1)
        return float(x.mean())
    model = TinyNet(loss="gan")  # with a discriminator that trains inside the loss forward
    # A different agent seed per rank: if any rank but 0 decided, the ranks' weights would differ.
    cb = AgentLossCallback(al.RandomAgent(seed=100 + rank), [al.CallableObjective(score, name="mean",
                           higher_is_better=True)], probe(), stage_length=2, run_dir=os.path.join(out, f"run{rank}"))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False, callbacks=[cb],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data(n=16))
    rank = trainer.global_rank
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"weights": dict(model.loss_fn.weights), "history": [r.to_dict() for r in cb.history],
                   "calls": len(calls), "params": [p.sum().item() for p in model.net.parameters()],
                   "ignored": sorted(model._ddp_params_and_buffers_to_ignore),
                   "records": os.path.exists(os.path.join(out, f"run{rank}", "stages.jsonl"))}, f)
''')


@pytest.mark.slow
def test_ddp_rank0_decides_and_every_rank_applies_it(tmp_path):
    import inspect

    # The script imports the test's module and data from a plain file beside it (DDP re-runs the script).
    helpers = "\n".join(["import torch", "from torch import nn", "import lightning.pytorch as pl",
                         "import agentloss as al", inspect.getsource(TinyNet), inspect.getsource(data),
                         inspect.getsource(probe)])
    (tmp_path / "ddp_net.py").write_text(helpers)
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["weights"] == r1["weights"] != {"l1": 1.0, "mse": 1.0, "gan": 0.1}
    assert r0["history"] == r1["history"] and [h["iteration"] for h in r0["history"]] == [0, 2, 4]
    assert r0["params"] == r1["params"]  # DDP kept the replicas equal under the shared weights
    # The loss's own parameters (the discriminator) are left out of DDP: they train inside the loss forward.
    assert r0["ignored"] and all(n.startswith("loss_fn.terms.gan.") for n in r0["ignored"])
    assert r0["calls"] == 3 * 2 and r1["calls"] == 0  # S0 + 2 stage ends x 2 probe images, on rank 0 only
    assert r0["records"] and not r1["records"]


class _LoggingNet(TinyNet):
    """Logs its loss as a LightningModule does, and counts the logs that reached Lightning."""

    def __init__(self):
        super().__init__(loss="gan")  # a discriminator and its Adam: state a trial must put back
        self.log_calls, self.autocasts = 0, set()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.autocasts.add(self.autocast)
        self.log("train_loss", loss)
        return {"loss": loss}

    def log(self, *args, **kwargs):
        self.log_calls += 1
        return super().log(*args, **kwargs)


def _trial_run(root: Path, trials: int, precision: str = "32-true"):
    model = _LoggingNet()
    agent = KeepingTrialAgent(trials)
    extra = {"trial_batches": data(n=6, batch=2)} if trials else {}
    cb = AgentLossCallback(agent, [mean_objective()], probe(), stage_length=2, **extra)
    t = trainer(root, [cb], max_steps=6, precision=precision, gradient_clip_val=0.5)
    t.fit(model, data(n=24))
    return model, agent, cb, t


@pytest.mark.slow
def test_snapshot_trials_through_the_callback_leave_training_as_it_was(tmp_path):
    with_trials, agent, cb, t = _trial_run(tmp_path / "a", trials=1, precision="bf16-mixed")
    plain, _, _, t_plain = _trial_run(tmp_path / "b", trials=0, precision="bf16-mixed")
    # 3 stage ends, each 2 candidates x 3 trial steps, measured and different; the run itself untouched.
    assert len(agent.measured) == 3 and all(a != b for a, b in agent.measured)
    assert cb.scheduler.trials.iterations == 3 * 2 * 3 and with_trials.calls == 6 + 18 and plain.calls == 6
    assert t.global_step == t_plain.global_step == 6 and with_trials.log_calls == plain.log_calls == 6
    assert with_trials.autocasts == {(True, torch.bfloat16)}  # trial steps train under the trainer's precision
    a, b = with_trials.state_dict(), plain.state_dict()
    assert _same(a, b)  # the discriminator and the loss weights too


def test_trials_through_the_callback_fail_before_training_when_miswired(tmp_path):
    with pytest.raises(ValueError, match="pass AgentLossCallback\\(..., trial_batches="):
        AgentLossCallback(KeepingTrialAgent(1), [mean_objective()], probe(), stage_length=2)
    with pytest.raises(ValueError, match="asks for no trials"):
        AgentLossCallback(al.RandomAgent(seed=0), [mean_objective()], probe(), stage_length=2, trial_batches=data())
    with pytest.raises(TypeError, match="builds the SnapshotTrials itself"):
        AgentLossCallback(KeepingTrialAgent(1), [mean_objective()], probe(), stage_length=2, trials=object())

    class Manual(TinyNet):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    cb = AgentLossCallback(KeepingTrialAgent(1), [mean_objective()], probe(), stage_length=2, trial_batches=data())
    model = Manual()
    with pytest.raises(ValueError, match="need automatic optimization"):
        trainer(tmp_path, [cb], max_steps=2).fit(model, data())
    assert model.calls == 0
