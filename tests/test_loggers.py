"""Stage loggers: a real SummaryWriter read back from its event file, a real offline W&B run read back
from its ``.wandb`` file, and loggers that fail without stopping training."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from pathlib import Path

import pytest
import torch

import agentloss as al
from agentloss.loggers import TensorBoardLogger, WandbLogger, stage_metrics

LOSSES = ("l1", "mse")
OBJECTIVES = ("contrast", "brightness")


def train(callbacks, on_step=None, stages: int = 3, stage_length: int = 2) -> al.StageScheduler:
    """A tiny conv net trained ``stages`` stages with a random agent (the weights change every stage)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3, padding=1))
    loss_fn = al.AgentWeightedLoss(dict.fromkeys(LOSSES, 1.0))
    objectives = [al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True),
                  al.CallableObjective(lambda x: x.mean().item(), name="brightness", higher_is_better=True)]
    sched = al.StageScheduler(loss_fn, al.RandomAgent(seed=0), objectives, model, torch.rand(2, 3, 16, 16),
                              stage_length=stage_length, total_stages=stages, callbacks=callbacks)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(stages * stage_length):
        x = torch.rand(2, 3, 16, 16, generator=g)
        loss = loss_fn(model(x), x)
        opt.zero_grad(); loss.backward(); opt.step()
        sched.step()
        if on_step is not None:
            on_step(sched, loss.item())
    return sched


def test_stage_metrics_of_a_record():
    rec = al.StageRecord(stage=2, iteration=40, weights={"l1": 1.0, "gan": 0.1}, next_weights={"l1": 0.8, "gan": 0.2},
                         scores={"niqe": 4.5, "psnr": None}, fallback="agent raised", warnings=["a", "b"],
                         timings={"train_s": 9.0, "restore_s": 0.5, "score_niqe_s": 0.2, "score_s": 0.25, "agent_s": 1.0})
    m = stage_metrics(rec)
    assert m == {"agentloss/stage": 2.0, "agentloss/weight/l1": 0.8, "agentloss/weight/gan": 0.2,
                 "agentloss/score/niqe": 4.5, "agentloss/fallback": 1.0, "agentloss/agent_s": 1.0,
                 "agentloss/stage_end_s": 1.75, "agentloss/warnings": 2.0}


def test_tensorboard_logger_three_stages_read_back_from_the_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    sched = train([logger])
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"agentloss/stage", "agentloss/fallback", "agentloss/warnings", "agentloss/agent_s",
                    "agentloss/stage_end_s", *(f"agentloss/weight/{n}" for n in LOSSES),
                    *(f"agentloss/score/{n}" for n in OBJECTIVES)}
    history = sched.history
    assert [r.iteration for r in history] == [0, 2, 4, 6]
    assert len({tuple(r.next_weights.values()) for r in history}) > 1  # the weights did change
    for name in LOSSES:
        events = acc.Scalars(f"agentloss/weight/{name}")
        assert [e.step for e in events] == [r.iteration for r in history]
        assert [e.value for e in events] == pytest.approx([r.next_weights[name] for r in history], rel=1e-6)
    for name in OBJECTIVES:
        events = acc.Scalars(f"agentloss/score/{name}")
        assert [e.value for e in events] == pytest.approx([r.scores[name] for r in history], rel=1e-6)
    assert [e.value for e in acc.Scalars("agentloss/fallback")] == [0.0] * 4
    assert [e.value for e in acc.Scalars("agentloss/warnings")] == [0.0] * 4
    # Only stages 1 and 2 asked the agent (S0 has no decision, the final stage skips it).
    agent = acc.Scalars("agentloss/agent_s")
    assert [e.step for e in agent] == [2, 4]
    assert [e.value for e in agent] == pytest.approx([history[1].timings["agent_s"], history[2].timings["agent_s"]],
                                                     rel=1e-6)


def test_tensorboard_logger_on_your_own_writer_leaves_it_open(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "tb")
    logger = TensorBoardLogger(writer)
    rec = al.StageRecord(stage=1, iteration=10, weights={"l1": 1.0}, next_weights={"l1": 0.5}, scores={"psnr": 30.0})
    rec.applied_iteration = 12  # an asynchronous decision applied two steps after its stage end
    logger(rec)
    logger.close()
    writer.add_scalar("train/loss", 0.1, 13)  # still open: yours to close
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("agentloss/weight/l1")] == [(12, 0.5)]
    assert [e.step for e in acc.Scalars("train/loss")] == [13]


# -- Weights & Biases ------------------------------------------------------------------------------------
def _wandb_records(path: Path):
    """The records of a ``.wandb`` file (W&B's record log: a 7-byte header, then 32 KiB blocks of
    chunks ``crc32 (4) | length (2, LE) | type (1) | data``, each record a ``wandb_internal_pb2.Record``)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_history(run_dir: Path, timeout: float = 30.0) -> list[dict]:
    """The history rows of a finished offline run, once its service has written them all (the
    ``exit`` record is last; the file may still be flushing when ``finish()`` returns)."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = list(_wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.2)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="agentloss-tests", dir=str(tmp_path))
    yield run
    run.finish()


def test_wandb_logger_offline_run_with_steps_that_only_increase(offline_run, tmp_path):
    run = offline_run
    logger = WandbLogger()  # wandb.run
    assert logger.run is run

    def user_logs(sched, loss):  # the user's own metric at every optimizer step
        run.log({"train/loss": loss}, step=sched.iteration)

    sched = train([logger], on_step=user_logs)
    # A decision applied at a step lower than one already logged (an asynchronous agent): W&B would
    # drop it, and at the last step it would overwrite stage 3's row: it lands on the next step, its
    # true step in agentloss/iteration.
    late = al.StageRecord(stage=4, iteration=3, weights={"l1": 1.0, "mse": 1.0},
                          next_weights={"l1": 0.25, "mse": 4.0}, scores={"contrast": 0.5, "brightness": 0.5})
    logger(late)
    assert logger.last_step == 7
    # The run's own step ahead of the decisions (Lightning logs without step=): logged there.
    run.log({"train/loss": 0.0}, step=50)
    logger(al.StageRecord(stage=5, iteration=8, weights={"l1": 0.25, "mse": 4.0},
                          next_weights={"l1": 0.5, "mse": 2.0}, scores={"contrast": 0.4, "brightness": 0.4}))
    assert logger.last_step == 50
    run_dir = Path(run.dir).parent
    run.finish()

    history = wandb_history(run_dir)
    rows = [r for r in history if "agentloss/iteration" in r]
    assert [(r["_step"], r["agentloss/iteration"], r["agentloss/stage"]) for r in rows] == \
        [(0, 0, 0), (2, 2, 1), (4, 4, 2), (6, 6, 3), (7, 3, 4), (50, 8, 5)]
    assert [r["_step"] for r in history] == sorted({r["_step"] for r in history})  # one row per step, increasing
    assert sum("train/loss" in r for r in history) == 7  # the user's metrics are all there too
    by_stage = {r["agentloss/stage"]: r for r in rows}
    for rec in sched.history:
        row = by_stage[rec.stage]
        assert row["_step"] == rec.iteration == row["agentloss/iteration"]
        for name in LOSSES:
            assert row[f"agentloss/weight/{name}"] == pytest.approx(rec.next_weights[name])
        for name in OBJECTIVES:
            assert row[f"agentloss/score/{name}"] == pytest.approx(rec.scores[name])
        assert row["agentloss/fallback"] == 0
    assert by_stage[4]["agentloss/weight/mse"] == 4.0 and by_stage[5]["agentloss/weight/mse"] == 2.0


def test_a_logger_that_raises_does_not_stop_training(offline_run, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    failing = WandbLogger(offline_run)
    offline_run.finish()  # logging to a finished run raises
    from wandb.errors import UsageError

    with pytest.raises(UsageError, match="finished"):
        failing(al.StageRecord(stage=0, iteration=0, weights={"l1": 1.0}))
    tb = TensorBoardLogger(tmp_path / "tb")
    with caplog.at_level(logging.WARNING, logger="agentloss"):
        sched = train([failing, tb])
    tb.close()
    assert [r.stage for r in sched.history] == [0, 1, 2, 3]
    assert sum("stage callback" in m and "failed" in m for m in caplog.messages) == 4
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("agentloss/stage")] == [0, 2, 4, 6]  # the logger after it still ran


def test_missing_packages_and_runs_are_named(monkeypatch, tmp_path):
    wandb = pytest.importorskip("wandb")
    assert wandb.run is None
    with pytest.raises(RuntimeError, match=r"wandb.init"):
        WandbLogger()
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        WandbLogger()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path / "tb")
