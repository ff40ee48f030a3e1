"""Train a task from its config: one agent (``run``) or Fixed / Random / the agent side by side (``compare``).

:func:`setup_from_config` turns a config into the harness's :class:`~agentloss.tasks.harness.Setup`
(the start is the checkpoint, or an L1 warm start made once and cached as ``start.pt``), and the
harness trains every method from it with the same seed, stream, probe and discriminator
initialisation, so the only difference is who sets the weights. Each method writes its own run
directory (``stages.jsonl``, ``run.json``, ``curves.png``, ``checkpoint.pt`` at each stage end for
resume, ``final.pt``), then every final model is scored on the evaluation sets and
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
from collections.abc import Sequence
from typing import Any

import torch

from . import harness
from .build import (
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
from .config import RunConfig, agent_options, dump_config
from .harness import Comparison, EvalSpec, MethodResult, Setup, score_method, train_method
from .identity import config_differences
from .preflight import check_setup
from .report import LABELS as METHOD_LABELS
from .report import comparison_plot, crops_figure, direction_table, format_table
from .warmstart import WarmStart, warm_start

log = logging.getLogger("agentloss")

__all__ = ["METHOD_LABELS", "Comparison", "MethodResult", "agent_config", "check", "compare", "comparison_json",
           "run", "setup_from_config"]


def agent_config(cfg: RunConfig, method: str, seed: int | None = None) -> dict[str, Any]:
    """The ``create_agent`` config of a method at ``seed`` (default the config's): Fixed, Random, the
    configured ``agent`` or one of ``agents``; an agent that takes a ``seed`` and has none configured gets the run's."""
    seed = cfg.seed if seed is None else seed
    if method == "fixed":
        return {"type": "fixed"}
    if method == "random":
        return {"type": "random", "seed": seed}
    out = dict(cfg.agents.get(method, cfg.agent))
    if "seed" not in out and "seed" in agent_options(out["type"]):
        out["seed"] = seed  # several seeds: each its own agent draws, as Random's
    return out


def _start_key(cfg: RunConfig) -> str:
    # The warm start depends only on these fields; a changed one makes a new start.
    parts = cfg.model_dump(mode="json", include={"task", "seed", "backbone", "data"})
    parts["pretrain"] = [cfg.train.pretrain_iters, cfg.train.pretrain_lr]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def setup_from_config(cfg: RunConfig, seeds: Sequence[int] | None = None) -> Setup:
    """The harness setup of a task config; several ``seeds`` put each run in ``<out>/<method>/seed<k>``."""
    seeds = (cfg.seed,) if seeds is None else tuple(seeds)
    sets, missing = build_eval_sets(cfg)
    probe_lq, probe_gt = build_probe(cfg, seed=cfg.seed)  # one probe for every seed: scores stay comparable
    out = cfg.out_dir
    warm = WarmStart(iters=0 if cfg.backbone.checkpoint else cfg.train.pretrain_iters, lr=cfg.train.pretrain_lr,
                     seed=cfg.seed, betas=cfg.train.betas, cache=out / "start.pt", key=_start_key(cfg),
                     batches=lambda: build_stream(cfg, seed=cfg.seed + 10_007))  # not the stream methods train on
    one = seeds == (cfg.seed,)
    return Setup(
        model=lambda: build_model(cfg), loss=lambda: build_loss(cfg),
        objectives=lambda device: build_objectives(cfg, device),
        stream=lambda seed: build_stream(cfg, seed=seed), trial_stream=lambda seed: build_stream(cfg, seed=seed + 7919),
        probe_lq=probe_lq, probe_references=probe_gt, agent_config=lambda m, s: agent_config(cfg, m, s),
        methods=tuple(cfg.compare), stage_length=cfg.train.stage_length, stages=cfg.train.stages,
        asynchronous=cfg.train.asynchronous, apply_at=cfg.train.apply_at, scale=cfg.scale,
        seeds=seeds, lr=cfg.train.lr, betas=cfg.train.betas, warm=warm,
        eval=EvalSpec(sets, eval_metrics(cfg), metric_kwargs(cfg), ema=cfg.eval.ema, tile=cfg.eval.tile,
                      pad_multiple=pad_multiple(cfg), skipped=missing),
        restore=restore_fn(cfg), device=resolve_device(cfg.device), seed_before_model=True,
        run_dir=lambda m, s: out / m if one else out / m / f"seed{s}", keep_files=True, identity=dump_config(cfg),
        differences=config_differences, labels=METHOD_LABELS, log_every=cfg.train.log_every)


def _threads(cfg: RunConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def check(cfg: RunConfig, methods: Sequence[str] | None = None) -> Setup:
    """Build and try every part the runs of ``methods`` (default ``cfg.compare``) will use, training nothing
    (``agentloss run|compare --check``); raises ``ConfigError`` or ``BackendError`` with the fix."""
    _threads(cfg)
    setup = setup_from_config(cfg)
    check_setup(setup, methods)
    return setup


def run(cfg: RunConfig, progress: bool = True, resume: bool = True) -> MethodResult:
    """Train the configured agent (``cfg.agent``), then evaluate; writes into ``cfg.out_dir``."""
    setup = check(cfg, ["agent"])  # a part that cannot work fails now, not after the warm start
    start = None
    if cfg.backbone.checkpoint or cfg.train.pretrain_iters:
        start = warm_start(setup.model, setup.warm, setup.device, progress)[0]  # type: ignore[arg-type]
    result = score_method(setup, train_method(setup, "agent", cfg.seed, start, cfg.out_dir, progress=progress,
                                              resume=resume))
    extra = {"evaluation_last": result.scores_last.mean} if result.scores_last is not None else {}
    (cfg.out_dir / "evaluation.json").write_text(json.dumps(
        {"evaluation": result.evaluation, "per_image": result.per_image, **extra,
         "skipped_sets": setup.eval.skipped, "timings": result.timings}, indent=2), encoding="utf-8")
    return result


def compare(cfg: RunConfig, progress: bool = True, resume: bool = True, methods: Sequence[str] | None = None,
            seeds: Sequence[int] | None = None) -> Comparison:
    """Run each method of ``cfg.compare`` (or ``methods``) at ``cfg.seed`` (or each of ``seeds``) from the
    same start; evaluate; write table, crops and curves into ``cfg.out_dir``."""
    t0 = time.perf_counter()
    _threads(cfg)
    setup = setup_from_config(cfg, seeds)
    check_setup(setup, methods)  # every method's parts, before the first one trains
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(dump_config(cfg), encoding="utf-8")
    comp = harness.compare(setup, methods, progress=progress, resume=resume, check=False)
    comp.config, comp.skipped_sets = cfg, list(setup.eval.skipped)
    comp.wall_s = time.perf_counter() - t0
    (out / "table.md").write_text(format_table(comp) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps(comparison_json(comp), indent=2), encoding="utf-8")
    models = {"start": comp.start.model, **{m: r.scored_model for m, r in comp.results.items()}}
    for name, fn in (("crops.png", lambda p: crops_figure(cfg, models, setup.eval.sets, setup.device, p)),
                     ("compare.png", lambda p: comparison_plot(comp, p))):
        try:
            fn(out / name)
        except Exception as e:  # noqa: BLE001 - figures are extras: a failure is reported, the results are kept
            log.warning("could not draw %s: %s", name, e)
    comp.wall_s = time.perf_counter() - t0
    return comp


def _method_json(r: MethodResult) -> dict[str, Any]:
    extra = {"evaluation_last": r.scores_last.mean} if r.scores_last is not None else {}
    return {"evaluation": r.evaluation, "per_image": r.per_image, **extra, "timings": r.timings,
            "final_weights": r.history[-1].weights if r.history else None,
            "fallbacks": sum(x.fallback is not None for x in r.history), "run_dir": str(r.run_dir)}


def comparison_json(comp: Comparison) -> dict[str, Any]:
    """``results.json``: per method its run (one seed) or the mean over seeds and each seed's run."""
    cfg = comp.config
    if len(comp.seeds) <= 1:
        methods = {m: _method_json(r) for m, r in comp.results.items()}
    else:
        methods = {m: {"mean": comp.mean_evaluation(m),
                       "runs": {str(r.seed): _method_json(r) for r in comp.runs if r.method == m}}
                   for m in comp.results}
    return {"task": cfg.task, "name": cfg.name, "seeds": comp.seeds, "eval_ema": cfg.eval.ema,
            "skipped_sets": comp.skipped_sets, "start": comp.start_eval, "wall_s": comp.wall_s,
            "methods": methods, "directions": direction_table(cfg)}
