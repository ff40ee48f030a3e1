"""The comparison harness: train each method from one start on the same data, then score every final model.

A :class:`Setup` holds the pieces (model, loss and objective factories, seeded training and trial
streams, the probe, the evaluation sets, the warm start); the task configs
(:func:`agentloss.tasks.runner.setup_from_config`) and the quality benchmark each build one, and
:func:`compare` runs the same loop for both: seeds in the outer loop, methods inside, so a partial
result always holds complete pairs. For seed ``k`` every method gets the same start, the same
``torch.manual_seed(k)`` before its loss is built (so the GAN discriminator starts identical), the
same stream and the same probe; only the agent differs. With ``EvalSpec.ema`` the final scores are
those of an exponential moving average of the weights (``torch.optim.swa_utils``); the agents
still see the last iterate, which is scored too.

>>> import torch, agentloss as al
>>> from agentloss.backbones import create_backbone
>>> batches = lambda seed: iter(lambda: (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)), None)
>>> setup = Setup(model=lambda: create_backbone("small_sr", 2, width=8, depth=1),
...     loss=lambda: al.AgentWeightedLoss({"l1": 1.0, "fft": 0.1}), objectives=lambda d: [al.PSNRObjective()],
...     stream=batches, probe_lq=[torch.rand(3, 16, 16)], probe_references=[torch.rand(3, 32, 32)],
...     agent_config=lambda method, seed: {"type": method}, methods=("fixed", "random"), stage_length=2, stages=2,
...     scale=2, eval=EvalSpec(sets=[EvalSet("noise", [(torch.rand(3, 16, 16), torch.rand(3, 32, 32))])]))
>>> comp = compare(setup)
>>> [(r.method, r.seed, len(r.history)) for r in comp.runs], sorted(comp.results["fixed"].evaluation["noise"])
([('fixed', 0, 3), ('random', 0, 3)], ['psnr', 'ssim'])
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..records import StageRecord, read_records
from ..scheduler import StageScheduler
from ..trials import trials_for
from . import checkpoint
from .preflight import build_agent, check_setup
from .scoring import EvalSet, EvalSpec, Scores, score
from .warmstart import Batch, WarmStart, progress_bar, warm_start

if TYPE_CHECKING:
    from .. import AgentWeightedLoss, Objective

logger = logging.getLogger("agentloss")

__all__ = ["Comparison", "EvalSet", "EvalSpec", "MethodResult", "Scores", "Setup", "StartResult", "compare",
           "make_start", "score", "score_method", "train_method"]


@dataclass
class Setup:
    """Everything a comparison trains and scores with (see the module docstring).

    ``model()`` makes a fresh network; ``seed_before_model``: its init is drawn after the run's
    ``torch.manual_seed`` (the task configs, whose network may start fresh) rather than before it (the
    benchmark, whose network always loads the start; its discriminator init then follows the seed
    directly). ``stream(seed)`` / ``trial_stream(seed)``: the training batches and the separate
    batches of snapshot trials. ``agent_config(method, seed)``: a ``create_agent`` config.
    ``identity``: written to ``config.json`` and checked before resuming: ``differences(saved, identity)``
    names what makes a checkpoint another run's (default: any change); such a checkpoint is moved
    aside, not overwritten. ``keep_files``: write ``config.json``, a checkpoint at each stage end,
    ``final.pt`` and ``curves.png`` per run (the streams must then have ``state_dict``/``load_state_dict``,
    for an exact resume).
    """

    model: Callable[[], nn.Module]
    loss: Callable[[], AgentWeightedLoss]
    objectives: Callable[[torch.device], list[Objective]]
    stream: Callable[[int], Iterator[Batch]]
    probe_lq: list[torch.Tensor]
    probe_references: list[torch.Tensor] | None
    agent_config: Callable[[str, int], dict[str, Any]]
    methods: tuple[str, ...]
    stage_length: int
    stages: int
    scale: int
    seeds: tuple[int, ...] = (0,)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    trial_stream: Callable[[int], Iterator[Batch]] | None = None
    warm: WarmStart | None = None
    eval: EvalSpec = field(default_factory=EvalSpec)
    restore: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed_before_model: bool = True
    run_dir: Callable[[str, int], Path | None] = lambda method, seed: None
    keep_files: bool = False
    identity: str = ""
    differences: Callable[[str, str], list[str]] = lambda saved, now: [] if saved == now else ["config"]
    labels: Mapping[str, str] = field(default_factory=dict)
    log_every: int = 10
    asynchronous: bool = False  # the scheduler's asynchronous / apply_at
    apply_at: str = "next_stage"


@dataclass
class MethodResult:
    """One trained method at one seed: its stage records, final scores (set -> metric -> mean), timings."""

    method: str
    run_dir: Path | None
    history: list[StageRecord]
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the last iterate (not serialised)
    seed: int = 0
    agent_config: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None  # of the scored model: the EMA when there is one
    scores_last: Scores | None = None  # of the last iterate, when an EMA was scored instead
    ema_model: nn.Module | None = field(default=None, repr=False)
    trial_iterations: int = 0
    wall_s: float = 0.0

    @property
    def scored_model(self) -> nn.Module | None:
        return self.ema_model if self.ema_model is not None else self.model


@dataclass
class StartResult:
    """The shared start: its weights, how it was made (``cache``/``cached``/``seconds``) and its scores."""

    state: dict[str, torch.Tensor] | None
    info: dict[str, Any]
    scores: Scores | None
    model: nn.Module | None = field(default=None, repr=False)


@dataclass
class Comparison:
    """Every run of :func:`compare`, in order (seed outside, method inside), and the start."""

    runs: list[MethodResult]
    start: StartResult
    wall_s: float = 0.0
    config: Any = None  # the task config it came from, when it came from one
    skipped_sets: list[str] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(r.seed for r in self.runs))

    @property
    def results(self) -> dict[str, MethodResult]:
        """Method -> its run at the first seed (the only one in a single-seed comparison)."""
        first = self.seeds[0] if self.runs else None
        return {r.method: r for r in self.runs if r.seed == first}

    @property
    def start_eval(self) -> dict[str, dict[str, float]]:
        return self.start.scores.mean if self.start.scores is not None else {}

    def mean_evaluation(self, method: str) -> dict[str, dict[str, float]]:
        """Set -> metric -> mean over the seeds of ``method`` (a metric missing at any seed is left out)."""
        runs = [r.evaluation for r in self.runs if r.method == method]
        sets = list(dict.fromkeys(s for e in runs for s in e))
        return {s: {m: sum(e[s][m] for e in runs) / len(runs) for m in runs[0].get(s, {})
                    if all(m in e.get(s, {}) for e in runs)} for s in sets}


def _fmt(scores: Mapping[str, float | None], texts: Mapping[str, str] | None = None) -> str:
    nums = [f"{k}={v:.3f}" if v is not None and not math.isnan(v) else f"{k}=n/a" for k, v in scores.items()]
    return " ".join([*nums, *(f"{k}={v!r}" for k, v in (texts or {}).items())])


def _weights(w: Mapping[str, float] | None) -> str:
    return ":".join(f"{v:.3g}" for v in (w or {}).values())


def _close(agent: Any) -> None:
    close = getattr(getattr(agent, "backend", None), "close", None)
    if callable(close):
        close()  # free an LLM before the next run loads it again


def _resumable(setup: Setup, method: str, ckpt: Path | None, device: torch.device,
               resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None; one that must make way is moved aside with a warning."""
    if ckpt is None or not ckpt.is_file():
        return None
    if resume:
        state = checkpoint.load(ckpt, device)
        differ = setup.differences(str(state.get("config", "")), setup.identity)
        if not differ:
            return state
        why = f"it was made with another config ({', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''} differ)"
    else:
        why = "a fresh start was asked for"
    moved = checkpoint.archive(ckpt)
    logger.warning("%s: %s; starting afresh, the old checkpoint is kept as %s", method, why, moved)
    return None


def train_method(setup: Setup, method: str, seed: int, start: Mapping[str, torch.Tensor] | None,
                 run_dir: Path | None = None, *, progress: bool = False, resume: bool = False,
                 say: Callable[[str], None] | None = None) -> MethodResult:
    """Train ``method`` at ``seed`` from ``start`` (None: the seeded init); resumes from ``run_dir/checkpoint.pt``."""
    t_run = time.perf_counter()
    say = say or logger.info
    device = setup.device
    if setup.seed_before_model:
        torch.manual_seed(seed)
        model = setup.model()
    else:
        model = setup.model()
        torch.manual_seed(seed)  # the same GAN discriminator initialisation for every method
    if start is not None:
        model.load_state_dict(start)
    model.to(device)
    loss_fn = setup.loss().to(device)
    agent_cfg = setup.agent_config(method, seed)
    agent = build_agent(setup, method, seed)
    objectives = setup.objectives(device)
    needs_ref = any(o.needs_reference for o in objectives) and setup.probe_references is not None
    opt = torch.optim.Adam(model.parameters(), setup.lr, betas=setup.betas)
    # Trials draw their own batches: the training stream stays the one a method without trials sees.
    trial_stream = setup.trial_stream or (lambda s: setup.stream(s + 7919))
    trials = trials_for(agent_cfg, opt, lambda: trial_stream(seed))
    refs = [p.to(device) for p in setup.probe_references or []] if needs_ref else None
    sched = StageScheduler(loss_fn, agent, objectives, model, [p.to(device) for p in setup.probe_lq],
                           probe_references=refs, stage_length=setup.stage_length, total_stages=setup.stages,
                           run_dir=run_dir, restore_fn=setup.restore, trials=trials,
                           asynchronous=setup.asynchronous, apply_at=setup.apply_at)
    stream = setup.stream(seed)
    # SR recipes score an EMA of the weights: the last iterate's NIQE moves +-0.035 from one
    # iteration to the next, more than most differences between methods; the EMA's +-0.008.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(setup.eval.ema)) if setup.eval.ema else None
    ckpt = run_dir / "checkpoint.pt" if setup.keep_files and run_dir is not None else None
    state = _resumable(setup, method, ckpt, device, resume)
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            loss_fn.load_state_dict(state["loss"])
            sched.load_state_dict(state["scheduler"])
            stream.load_state_dict(state["stream"])  # type: ignore[attr-defined]
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"{ckpt} does not fit this run ({type(e).__name__}: {e}); move it away, "
                                             f"or run with --fresh to start again (it is then kept aside)") from None
        if state.get("rng") is not None:
            checkpoint.set_rng_state(state["rng"])  # DropPath and the like draw on from where they were
        logger.info("%s: resumed at iteration %d", method, sched.iteration)
    elif ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        (ckpt.parent / "config.json").write_text(setup.identity, encoding="utf-8")
    tag = f"[{method} seed {seed}]"
    total = setup.stages * setup.stage_length
    bar = progress_bar(total, f"{setup.labels.get(method, method):>6}", progress)
    write = bar.write if progress else say
    if not sched.started:
        s0 = sched.start()
        write(f"{tag} S0 probe: {_fmt(s0.scores, s0.texts)}")
    bar.update(sched.iteration)
    t_train = 0.0
    while sched.iteration < total:
        t = time.perf_counter()
        lq, gt = next(stream)
        loss = loss_fn(model(lq.to(device)), gt.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        t_train += time.perf_counter() - t
        record = sched.step()
        bar.update(1)
        if progress and sched.iteration % setup.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if record is not None:
            fb = f"  (fallback: {record.fallback})" if record.fallback else ""
            nxt = _weights(record.next_weights) if record.next_weights is not None else "(agent asked in the background)"
            write(f"{tag} stage {record.stage}/{setup.stages}: probe {_fmt(record.scores, record.texts)} weights "
                  f"{_weights(record.weights)} -> {nxt}  ({record.timings.get('train_s', 0):.1f}"
                  f" s train, {record.timings.get('agent_s', 0):.1f} s agent){fb}")
            if ckpt is not None:
                checkpoint.save(ckpt, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "loss": loss_fn.state_dict(),
                    "scheduler": sched.state_dict(), "stream": stream.state_dict(),  # type: ignore[attr-defined]
                    "ema": ema.state_dict() if ema is not None else None, "config": setup.identity,
                    "rng": checkpoint.rng_state()})
    bar.close()
    sched.close()
    _close(agent)
    if ckpt is not None:
        torch.save(model.state_dict(), ckpt.parent / "final.pt")
        if ema is not None:
            torch.save(ema.module.state_dict(), ckpt.parent / "final_ema.pt")
        try:
            from ..plotting import plot_run

            plot_run(ckpt.parent)
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
            logger.warning("could not plot %s: %s", run_dir, e)
    history = sched.history or (read_records(run_dir) if run_dir is not None else [])
    timings = {k: sum(r.timings.get(k, 0.0) for r in history) for k in ("train_s", "restore_s", "score_s", "agent_s")}
    timings["loop_train_s"] = t_train
    return MethodResult(method, run_dir, history, timings=timings, model=model, seed=seed, agent_config=agent_cfg,
                        ema_model=ema.module if ema is not None else None,
                        trial_iterations=trials.iterations if trials is not None else 0,
                        wall_s=time.perf_counter() - t_run)


def score_method(setup: Setup, result: MethodResult, say: Callable[[str], None] | None = None) -> MethodResult:
    """Fill in ``result``'s final scores: of the EMA (and the last iterate) when kept, else of the last iterate."""
    t = time.perf_counter()
    scored = result.scored_model
    if scored is None or not setup.eval.sets:
        return result
    result.scores = score(scored, setup.eval, setup.scale, setup.device)
    result.evaluation, result.per_image = result.scores.mean, result.scores.per_image
    if result.ema_model is not None and result.model is not None:
        result.scores_last = score(result.model, setup.eval, setup.scale, setup.device)
    result.timings["eval_s"] = time.perf_counter() - t
    result.wall_s += result.timings["eval_s"]
    last = f"  (last iterate: {_sets(result.scores_last.mean)})" if result.scores_last is not None else ""
    failed = [f for r in result.scores.sets.values() for f in r.settings.get("failures", [])]
    note = f"  ({len(failed)} failed, scored NaN: {'; '.join(failed[:3])})" if failed else ""
    (say or logger.info)(f"[{result.method} seed {result.seed}] eval{' (EMA)' if result.ema_model is not None else ''}: "
                      f"{_sets(result.evaluation)}{note}{last}")
    return result


def _sets(means: Mapping[str, Mapping[str, float]]) -> str:
    return "; ".join(f"{name}: {_fmt(m)}" if len(means) > 1 else _fmt(m) for name, m in means.items())


def make_start(setup: Setup, progress: bool = False,
               say: Callable[[str], None] | None = None) -> StartResult:
    """The shared start (the warm start, or None without one) and its own scores."""
    say = say or logger.info
    if setup.warm is None:
        return StartResult(None, {}, None)
    state, info = warm_start(setup.model, setup.warm, setup.device, progress)
    say(f"start: loaded from {info['cache']}" if info["cached"] else
        f"start: {setup.warm.iters} L1 iterations in {info['seconds']:.1f} s")
    model = setup.model()
    model.load_state_dict(state)
    model.to(setup.device)
    scores = score(model, setup.eval, setup.scale, setup.device) if setup.eval.sets else None
    if scores is not None:
        say(f"start (S0) eval: {_sets(scores.mean)}")
    return StartResult(state, info, scores, model)


def compare(setup: Setup, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *,
            progress: bool = False, resume: bool = False, log: Callable[[str], None] | None = None,
            on_run: Callable[[Comparison, MethodResult], None] | None = None, check: bool = True) -> Comparison:
    """Train every method at every seed from the shared start, and score each final model.

    ``methods``/``seeds`` default to the setup's; ``log`` receives the progress lines (default: the
    ``agentloss`` logger); ``on_run(comparison_so_far, result)`` is called after each scored run.
    ``check``: first build and try every part each method will use (``agentloss.tasks.preflight``).
    """
    t0 = time.perf_counter()
    say = log or logger.info
    if check:
        check_setup(setup, methods, seeds)
    comp = Comparison([], make_start(setup, progress, say))
    for seed in (setup.seeds if seeds is None else seeds):  # seeds outside: a partial result holds pairs
        for method in (setup.methods if methods is None else methods):
            res = train_method(setup, method, seed, comp.start.state, setup.run_dir(method, seed),
                               progress=progress, resume=resume, say=say)
            comp.runs.append(score_method(setup, res, say))
            if on_run is not None:
                on_run(comp, res)
    comp.wall_s = time.perf_counter() - t0
    return comp
