"""Train a task from its config: one agent (``run``) or Fixed / Random / the agent side by side (``compare``).

``compare`` gives every method the same start (the checkpoint, or an L1 warm start made once and
saved as ``start.pt``), the same seed, the same data stream, the same probe and the same GAN
discriminator initialisation, so the only difference is who sets the weights. Each method writes
its own run directory (``stages.jsonl``, ``run.json``, ``curves.png``, ``checkpoint.pt`` at each
stage end for resume, ``final.pt``), then every final model is scored on the evaluation sets and
``results.json``, ``table.md``, ``crops.png`` and ``compare.png`` are written.

Example (a tiny run on CPU, Fixed only):
    >>> import tempfile
    >>> from agentloss.tasks.config import load_config
    >>> cfg = load_config({"task": "cisr", "backbone": {"name": "swinir_light_tiny", "scale": 2},
    ...     "losses": {"l1": 1.0, "fft": 0.1}, "objectives": [{"name": "psnr"}], "agent": {"type": "fixed"},
    ...     "train": {"stage_length": 2, "total_iters": 4}, "data": {"patch": 32, "batch": 2},
    ...     "probe": {"count": 1, "size": 64}, "eval": {"size": 64, "max_images": 1}, "out": tempfile.mkdtemp()})
    >>> result = run(cfg, progress=False)
    >>> [r.stage for r in result.history], sorted(result.evaluation["photos"])
    ([0, 1, 2], ['psnr', 'ssim'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..agents.factory import create_agent
from ..datasets import evaluate
from ..plotting import plot_run
from ..records import StageRecord, read_records
from ..scheduler import StageScheduler
from ..trials import trials_for
from .build import (
    EvalSet,
    build_eval_sets,
    build_loss,
    build_model,
    build_objectives,
    build_probe,
    build_stream,
    eval_metrics,
    metric_kwargs,
    pad_multiple,
    resolve_device,
    restore_fn,
)
from .config import ConfigError, RunConfig, dump_config

log = logging.getLogger("agentloss")

METHOD_LABELS = {"start": "Start", "fixed": "Fixed", "random": "Random", "agent": "Agent"}


@dataclass
class MethodResult:
    """One trained method: its stage records, final evaluation (set -> metric -> mean), timings."""

    method: str
    run_dir: Path
    history: list[StageRecord]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the trained network (not serialised)


def agent_config(cfg: RunConfig, method: str) -> dict[str, Any]:
    if method == "fixed":
        return {"type": "fixed"}
    if method == "random":
        return {"type": "random", "seed": cfg.seed}
    return dict(cfg.agent)


def _start_key(cfg: RunConfig) -> str:
    # The warm start depends only on these fields; a changed one makes a new start.
    parts = cfg.model_dump(mode="json", include={"task", "seed", "backbone", "data"})
    parts["pretrain"] = [cfg.train.pretrain_iters, cfg.train.pretrain_lr]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def make_start(cfg: RunConfig, device: torch.device, progress: bool = True) -> dict[str, torch.Tensor]:
    """The shared start: the checkpoint, or ``train.pretrain_iters`` of L1 from a seeded init (cached)."""
    out = cfg.out_dir
    path = out / "start.pt"
    key = _start_key(cfg)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["state"]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    if not cfg.backbone.checkpoint and cfg.train.pretrain_iters:
        stream = build_stream(cfg, seed=cfg.seed + 10_007)  # not the stream the methods train on
        opt = torch.optim.Adam(model.parameters(), cfg.train.pretrain_lr, betas=cfg.train.betas)
        bar = _bar(cfg.train.pretrain_iters, "L1 warm start", progress)
        for _ in range(cfg.train.pretrain_iters):
            lq, gt = next(stream)
            loss = F.l1_loss(model(lq.to(device)), gt.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(l1=f"{loss.item():.4f}", refresh=False)
        bar.close()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "state": state}, path)
    return state


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def _save(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a broken checkpoint


def train_method(cfg: RunConfig, method: str, start: dict[str, torch.Tensor] | None, run_dir: Path,
                 device: torch.device, progress: bool = True, resume: bool = True) -> MethodResult:
    """Train one method from ``start`` (None: a fresh seeded init); resumes from ``run_dir/checkpoint.pt``."""
    torch.manual_seed(cfg.seed)  # same network and discriminator initialisation for every method
    model = build_model(cfg)
    if start is not None:
        model.load_state_dict(start)
    model.to(device)
    loss_fn = build_loss(cfg).to(device)
    agent_cfg = agent_config(cfg, method)
    try:
        agent = create_agent(agent_cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid run config:\n  agent: {e}") from e
    probe_lq, probe_gt = build_probe(cfg, seed=cfg.seed)
    objectives = build_objectives(cfg, device)
    needs_ref = any(o.needs_reference for o in objectives)
    stages = cfg.train.stages
    opt = torch.optim.Adam(model.parameters(), cfg.train.lr, betas=cfg.train.betas)
    trials = trials_for(agent_cfg, opt, lambda: build_stream(cfg, seed=cfg.seed + 7919))
    sched = StageScheduler(loss_fn, agent, objectives, model, [p.to(device) for p in probe_lq],
                           probe_references=[p.to(device) for p in probe_gt] if needs_ref else None,
                           stage_length=cfg.train.stage_length, total_stages=stages, run_dir=run_dir,
                           restore_fn=restore_fn(cfg), trials=trials)
    stream = build_stream(cfg, seed=cfg.seed)
    ckpt = run_dir / "checkpoint.pt"
    state = torch.load(ckpt, map_location=device, weights_only=False) if resume and ckpt.is_file() else None
    if state is not None and state.get("config") != dump_config(cfg):
        log.warning("%s: %s was made with another config; starting afresh", method, ckpt)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loss_fn.load_state_dict(state["loss"])
        sched.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        log.info("%s: resumed at iteration %d", method, sched.iteration)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(dump_config(cfg), encoding="utf-8")
    total = stages * cfg.train.stage_length
    bar = _bar(total, f"{METHOD_LABELS.get(method, method):>6}", progress)
    bar.update(sched.iteration)
    t_train = 0.0
    while sched.iteration < total:
        t = time.perf_counter()
        lq, gt = next(stream)
        loss = loss_fn(model(lq.to(device)), gt.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t_train += time.perf_counter() - t
        record = sched.step()
        bar.update(1)
        if sched.iteration % cfg.train.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if record is not None:
            scores = " ".join(f"{k}={v:.4g}" if v is not None else f"{k}=n/a" for k, v in record.scores.items())
            nxt = record.next_weights or record.weights
            line = (f"[{method}] stage {record.stage}/{stages}: {scores} -> " + ":".join(f"{w:.3g}" for w in nxt.values())
                    + (f"  ({record.fallback})" if record.fallback else ""))
            bar.write(line) if progress else log.info(line)
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "loss": loss_fn.state_dict(),
                         "scheduler": sched.state_dict(), "stream": stream.state_dict(), "config": dump_config(cfg)})
    bar.close()
    torch.save(model.state_dict(), run_dir / "final.pt")
    try:
        plot_run(run_dir)
    except Exception as e:  # a plot must never lose a finished run
        log.warning("could not plot %s: %s", run_dir, e)
    history = sched.history or read_records(run_dir)
    timings = {k: sum(r.timings.get(k, 0.0) for r in history) for k in ("train_s", "restore_s", "score_s", "agent_s")}
    timings["loop_train_s"] = t_train
    return MethodResult(method, run_dir, history, timings=timings, model=model)


def evaluate_model(cfg: RunConfig, model: nn.Module | None, sets: list[EvalSet], device: torch.device,
                   restore: Any = None) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Mean and per-image scores of ``model`` (or ``restore(lq)``) on each evaluation set."""
    means, per_image = {}, {}
    metrics = eval_metrics(cfg)
    for s in sets:
        res = evaluate(model, s.pairs, cfg.scale, metrics=metrics, restore_fn=restore, tile=cfg.eval.tile,
                       pad_multiple=pad_multiple(cfg), metric_kwargs=metric_kwargs(cfg), device=device, **s.kwargs)
        means[s.name], per_image[s.name] = res.mean, res.per_image
    return means, per_image


def _setup(cfg: RunConfig) -> torch.device:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


def run(cfg: RunConfig, progress: bool = True, resume: bool = True) -> MethodResult:
    """Train the configured agent (``cfg.agent``), then evaluate; writes into ``cfg.out_dir``."""
    device = _setup(cfg)
    start = make_start(cfg, device, progress) if (cfg.backbone.checkpoint or cfg.train.pretrain_iters) else None
    result = train_method(cfg, "agent", start, cfg.out_dir, device, progress, resume)
    sets, missing = build_eval_sets(cfg)
    result.evaluation, result.per_image = evaluate_model(cfg, result.model, sets, device)
    (cfg.out_dir / "evaluation.json").write_text(json.dumps(
        {"evaluation": result.evaluation, "per_image": result.per_image, "skipped_sets": missing,
         "timings": result.timings}, indent=2), encoding="utf-8")
    return result


@dataclass
class Comparison:
    """Fixed / Random / agent (and the start) on the same evaluation sets."""

    config: RunConfig
    results: dict[str, MethodResult]
    start_eval: dict[str, dict[str, float]]
    skipped_sets: list[str]
    wall_s: float = 0.0


def compare(cfg: RunConfig, progress: bool = True, resume: bool = True) -> Comparison:
    """Run each method of ``cfg.compare`` from the same start; evaluate; write table, crops and curves."""
    from .report import comparison_plot, crops_figure, format_table

    t0 = time.perf_counter()
    device = _setup(cfg)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_config(cfg), encoding="utf-8")
    start = make_start(cfg, device, progress)
    sets, missing = build_eval_sets(cfg)
    start_model = build_model(cfg)
    start_model.load_state_dict(start)
    start_model.to(device)
    start_eval, _ = evaluate_model(cfg, start_model, sets, device)
    results: dict[str, MethodResult] = {}
    models: dict[str, nn.Module] = {"start": start_model}
    for method in cfg.compare:
        res = train_method(cfg, method, start, out / method, device, progress, resume)
        t = time.perf_counter()
        res.evaluation, res.per_image = evaluate_model(cfg, res.model, sets, device)
        res.timings["eval_s"] = time.perf_counter() - t
        models[method] = res.model  # type: ignore[assignment]
        results[method] = res
    comp = Comparison(cfg, results, start_eval, missing, time.perf_counter() - t0)
    table = format_table(comp)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(comparison_json(comp), indent=2), encoding="utf-8")
    for name, fn in (("crops.png", lambda p: crops_figure(cfg, models, sets, device, p)),
                     ("compare.png", lambda p: comparison_plot(comp, p))):
        try:
            fn(out / name)
        except Exception as e:  # figures are extras: a failure is reported, the results are kept
            log.warning("could not draw %s: %s", name, e)
    comp.wall_s = time.perf_counter() - t0
    return comp


def comparison_json(comp: Comparison) -> dict[str, Any]:
    return {
        "task": comp.config.task, "name": comp.config.name, "skipped_sets": comp.skipped_sets,
        "start": comp.start_eval, "wall_s": comp.wall_s,
        "methods": {m: {"evaluation": r.evaluation, "per_image": r.per_image, "timings": r.timings,
                        "final_weights": r.history[-1].weights if r.history else None,
                        "fallbacks": sum(x.fallback is not None for x in r.history),
                        "run_dir": str(r.run_dir)} for m, r in comp.results.items()},
        "directions": direction_table(comp.config),
    }


def direction_table(cfg: RunConfig) -> dict[str, bool]:
    """metric -> higher is better (pyiqa's table)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    return {m: not DEFAULT_CONFIGS.get(m, {}).get("lower_better", False) for m in eval_metrics(cfg)}
