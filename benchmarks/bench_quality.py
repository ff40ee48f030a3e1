"""Quality benchmark: does an agent make a model better on *your* objective than fixed loss weights?

Classical x2 super-resolution with a small CNN (``SmallSR``, the quick start's network), on a CPU.
The network is first pretrained with L1 alone (once; cached in ``~/.cache/agentloss-bench/``, keyed
by its settings), and every method and seed starts from that same state. Then each method trains
it for ``--stages`` stages with ``AgentWeightedLoss({"l1": 1, "fft": 0.1, "gan": 0.01})`` (terms
that need no downloaded weights) while its agent re-weights the loss at every stage end from NIQE
and PSNR_Y on a probe set. The agent's goal (``needs``): lower NIQE while losing at most 0.2 dB PSNR.

Fair comparison: for seed ``k`` every method gets the same patch stream (``PatchPairStream`` seed
``k``), the same ``torch.manual_seed(k)`` before the loss is built (so the GAN discriminator starts
identical) and the same start weights; only the agent differs. Seeds run in the outer loop, so
machine noise spreads over all methods, and a partial result file still holds complete pairs.

Split (all photos ship in scikit-image; nothing is downloaded):

* training patches: astronaut, coffee, chelsea, rocket (``agentloss.data.NATURAL_PHOTOS``);
* probe set (what the agent sees): six 240x240 crops of the *right* view of ``stereo_motorcycle``
  (a 2x3 grid), LQ 120x120. Colour, natural, and large enough for NIQE (>= 192 px);
* evaluation set (final scores only; never trained on, never probed): the *left* motorcycle view
  (whole, 500x740), camera (512x512), coins (302x384) and the textures grass, gravel and brick
  (512x512). The left view shows the same scene as the probe from another viewpoint, so it tests
  new pixels rather than a new scene; the other five are new scenes, grey photos replicated to
  RGB. moon is left out (almost flat: NIQE on it says little) and clock_motion too (its
  ground truth is itself motion-blurred).

Final scores: NIQE (lower is better) and PSNR on the Y channel (dB, border of 2 px cropped, output
quantised to 8 bits) through ``agentloss.datasets.evaluation.evaluate``, of an exponential moving
average of the generator's weights (``--eval-ema 0.99``, kept by ``torch.optim.swa_utils``): the
last iterate's NIQE moves about +-0.035 from one iteration to the next, more than most paired
differences between methods, the EMA's about +-0.008 (``--eval-ema 0`` scores the last iterate,
as the first result files did; with an EMA the last iterate is scored too and saved as
``eval_last``). NIQE raises on flat, collapsed outputs; such an image is recorded as NaN with the
error, and that seed's mean NIQE is then missing (never silently averaged over the images that did
score, which would reward the collapse); the table counts these.

Output: a table (mean +- std over seeds; paired difference against Fixed with a 95 % Student-t
interval and a verdict; per-seed differences; time per method), ``--out`` (JSON with everything:
settings, split, per-image eval scores, per-stage weights and probe scores, timings) and
a plot beside it (``quality.json`` -> ``quality.png``). Per-stage records also go to
``<run-dir>/<method>/seed<k>/`` (``agentloss show`` / ``agentloss plot`` read them).

Commands::

    python benchmarks/bench_quality.py                                   # fixed, random, llm-paper, guided-trials60 x 5 seeds
    python benchmarks/bench_quality.py --gguf ~/.cache/agentloss-models/qwen2.5-1.5b-instruct-q4_k_m.gguf
    python benchmarks/bench_quality.py --openai-url http://127.0.0.1:8000/v1 --openai-model my-model
    python benchmarks/bench_quality.py --methods fixed,guided --method guided=configs/guided.yaml
    python benchmarks/bench_quality.py --methods fixed,random --method 'rand2={"type": "random", "max_factor": 2.0}'
    python benchmarks/bench_quality.py --loss l1=1,mscn=0.1,gan=0.01 --methods fixed   # another loss repository
    python benchmarks/bench_quality.py --quick                           # smoke test, well under a minute

``--method NAME=PATH_OR_JSON`` adds a method from any agent config ``agentloss.create_agent``
accepts (a JSON string, or a JSON/YAML file, optionally under an ``agent:`` key). Options the
config leaves out are filled in when the agent type takes them: ``seed`` (the seed index),
``needs`` (the benchmark's goal) and ``backend`` (from ``--gguf`` / ``--openai-url`` /
``--threads``; otherwise the embedded SmolLM2-135M).

Time, at the defaults (8 stages x 125 iterations, batch 8 of 48 px patches), measured on the
shared 2-core development machine with 1 torch thread and 1 llama.cpp thread (``--seeds 1
--stages 2`` for Fixed and Random, ``--stages 3 --stage-iters 5`` for two llm-paper decisions,
then extrapolated to 8 stages): training 0.08 s an iteration (10 s a stage), probe scoring 0.35 s
a stage, final evaluation 2-3 s, so a Fixed or Random run takes about 90 s. An ``llm-paper`` run
with the embedded SmolLM2 adds 22 s for the first decision and about 14 s for each later one (the
prompt prefix stays in llama.cpp's cache): 7 decisions, about 200 s a run. The L1 pretraining
(2000 iterations) takes about 50 s once, then comes from the cache. Fixed + Random + llm-paper x
5 seeds: about 32 minutes. ``guided-trials60`` adds 3 x 60 trial iterations and up to one model
call per stage end: with Qwen2.5-Coder-1.5B (``--gguf``) 420 s a run in two parallel processes
(92 s training, 121 s trials, 198 s model calls of a median 42 s). On a machine other programs
are using, keep llama.cpp at one thread (the embedded model's default on 2 cores;
``--threads 1``): with 2 threads a decision took 9 s when the cores were free and up to 157 s
when they were not, since llama.cpp's threads wait for each other at every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import agentloss as al
from agentloss.backbones import create_backbone
from agentloss.data import NATURAL_PHOTOS, PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.datasets.benchmarks import ImagePair
from agentloss.records import json_safe
from agentloss.tasks.config import agent_options
from agentloss.tasks.harness import Comparison, EvalSet, EvalSpec, MethodResult, Scores, Setup, compare, score

# PairedStats, sign_flip_p and t_quantile are re-exported: this script was their home and tests read them here.
from agentloss.tasks.stats import PairedStats, mean_std, paired_interval, sign_flip_p, t_quantile  # noqa: F401
from agentloss.tasks.stats import finite as _finite
from agentloss.tasks.warmstart import WarmStart, warm_start

ROOT = Path(__file__).resolve().parents[1]
SCALE = 2
INITIAL_WEIGHTS = {"l1": 1.0, "fft": 0.1, "gan": 0.01}
# A small discriminator keeps the GAN term's cost in proportion to this small generator.
TERM_OPTIONS = {"gan": {"width": 32, "depth": 2}}
NEEDS = "Lower NIQE (more natural-looking images) while losing at most 0.2 dB PSNR_Y."
DEFAULT_NIQE_PARAMS = ROOT.parent / "shared/data/niqe_modelparameters.mat"
BUILTIN_METHODS: dict[str, dict[str, Any]] = {
    "fixed": {"type": "fixed"},
    "random": {"type": "random"},
    "llm-paper": {"type": "llm"},  # default templates: the paper's three-part prompt
    "guided": {"type": "guided"},  # numbers propose, the LLM chooses and explains, a PSNR guard
    "guided-numbers": {"type": "guided", "backend": "none"},  # the same without a language model (ablation)
    # Guided, plus "keep" and the two best moves tried for 15 iterations from a snapshot at each stage end.
    "guided-trials": {"type": "guided", "trials": 2, "trial_steps": 15},
    # The kept design (pre-registered run, seeds 30-39): trials long enough for a weighting's effect
    # to show (60 of a stage's 125 iterations) and x2 moves.
    "guided-trials60": {"type": "guided", "trials": 2, "trial_steps": 60, "step": 2.0, "max_tokens": 80},
}
DEFAULTS: dict[str, Any] = {"seeds": 5, "stages": 8, "stage_iters": 125, "batch": 8, "patch": 48,
                            "pretrain_iters": 2000}
QUICK: dict[str, Any] = {"seeds": 2, "stages": 2, "stage_iters": 4, "batch": 4, "patch": 32, "pretrain_iters": 20}
PRETRAIN_SEED = 0
PRETRAIN_LR = 2e-4
TRAIN_LR = 1e-4
METRICS = ("niqe", "psnr_y")


# --------------------------------------------------------------------------------------------
# Model, data split, pretraining


@dataclass
class Split:
    """Training photos, probe pairs (LQ, HR) and evaluation pairs, with a description for the JSON."""

    train: list[torch.Tensor]
    probe_lq: list[torch.Tensor]
    probe_hr: list[torch.Tensor]
    eval_pairs: list[ImagePair]
    description: dict[str, Any]


def _grey_rgb(arr: Any) -> torch.Tensor:
    """A scikit-image uint8 array (grey or RGB) as a ``3xHxW`` float tensor in [0, 1]."""
    t = torch.from_numpy(arr.copy()).float() / 255.0
    t = t.unsqueeze(-1).expand(*t.shape, 3) if t.ndim == 2 else t[..., :3]
    return t.permute(2, 0, 1).contiguous()


def build_split() -> Split:
    """The fixed data split described in the module docstring."""
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    right_t = _grey_rgb(right)
    probe_boxes = [(y, x) for y in (0, 240) for x in (0, 250, 500)]  # 2x3 grid of 240 px crops in 500x741
    probe_hr = [right_t[:, y:y + 240, x:x + 240].contiguous() for y, x in probe_boxes]
    probe_lq = [bicubic_downsample(h.unsqueeze(0), SCALE)[0] for h in probe_hr]
    eval_images = {"motorcycle_left": _grey_rgb(left)}
    for name in ("camera", "coins", "grass", "gravel", "brick"):
        eval_images[name] = _grey_rgb(getattr(skimage.data, name)())
    eval_pairs = []
    for name, img in eval_images.items():
        gt = crop_to_multiple(img, SCALE).contiguous()
        eval_pairs.append(ImagePair(name, bicubic_downsample(gt.unsqueeze(0), SCALE)[0], gt))
    description = {
        "train": list(NATURAL_PHOTOS),
        "probe": [f"stereo_motorcycle right view [{y}:{y + 240}, {x}:{x + 240}]" for y, x in probe_boxes],
        "eval": {p.name: list(p.gt.shape[-2:]) for p in eval_pairs},
        "degradation": f"bicubic x{SCALE} (antialiased)",
    }
    return Split(builtin_photos(NATURAL_PHOTOS), probe_lq, probe_hr, eval_pairs, description)


def pretrain_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"net": "SmallSR(32,4)", "iters": args.pretrain_iters, "patch": args.patch, "batch": args.batch,
            "lr": PRETRAIN_LR, "seed": PRETRAIN_SEED, "photos": list(NATURAL_PHOTOS), "torch": torch.__version__}


def warm_spec(train: Sequence[torch.Tensor], settings: Mapping[str, Any], cache_dir: str | None) -> WarmStart:
    """The L1 pretraining of the shared start, cached in ``cache_dir`` under a key of its settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    # A stream seed no benchmark seed uses, so the pretraining batches are not replayed later.
    return WarmStart(iters=settings["iters"], lr=settings["lr"], seed=settings["seed"], key=key,
                     batches=lambda: PatchPairStream(train, SCALE, settings["patch"], settings["batch"],
                                                     seed=settings["seed"] + 10_000),
                     cache=Path(cache_dir).expanduser() / f"smallsr_l1_{key}.pt" if cache_dir else None)


def cached_pretrain(train: Sequence[torch.Tensor], settings: Mapping[str, Any],
                    cache_dir: str | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load the pretrained start from the cache, or train it and store it (keyed by its settings)."""
    return warm_start(small_sr, warm_spec(train, settings, cache_dir))


def small_sr() -> nn.Module:
    return create_backbone("small_sr", SCALE)


# --------------------------------------------------------------------------------------------
# Methods (agent configs)


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` or ``NAME=PATH`` (JSON or YAML, optionally under an ``agent:`` key) -> (name, config)."""
    name, sep, value = spec.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"--method wants NAME=PATH_OR_JSON, got {spec!r}")
    if value.startswith("{"):
        config = json.loads(value)
    else:
        import yaml

        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"--method {name}: {value!r} is neither a JSON object nor a file")
        config = yaml.safe_load(path.read_text())  # YAML reads JSON too
    if isinstance(config, Mapping) and "type" not in config and isinstance(config.get("agent"), Mapping):
        config = config["agent"]
    if not isinstance(config, Mapping) or "type" not in config:
        raise ValueError(f"--method {name}: the agent config needs a 'type' field, got {config!r}")
    return name, dict(config)


def backend_from_flags(args: argparse.Namespace) -> dict[str, Any] | None:
    """The backend every LLM-based method gets unless its config names one (None: embedded SmolLM2)."""
    threads = {"n_threads": args.threads} if args.threads else {}
    if args.gguf:
        return {"type": "llama_cpp", "model_path": str(Path(args.gguf).expanduser()), **threads}
    if args.openai_url:
        return {"type": "openai", "base_url": args.openai_url, "model": args.openai_model}
    if threads:
        from agentloss.backends.defaults import default_backend_config

        return {**default_backend_config(), **threads}
    return None


def resolve_methods(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Method name -> agent config template (``seed`` is filled in per run); validated before any work."""
    extra = dict(parse_method_spec(s) for s in args.method or [])
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    names += [n for n in extra if n not in names]
    backend = None
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ValueError(f"method name {name!r}: use letters, digits and _.+- (it names a run directory)")
        if name not in extra and name not in BUILTIN_METHODS:
            raise ValueError(f"unknown method {name!r}: built-in {sorted(BUILTIN_METHODS)}, or add --method {name}=...")
        config = dict(extra.get(name) or BUILTIN_METHODS[name])
        allowed = agent_options(config["type"])
        unknown = [k for k in config if k != "type" and k not in allowed]
        if unknown:
            raise ValueError(f"method {name!r}: unknown option(s) {unknown} for agent type {config['type']!r}")
        if "needs" in allowed:
            config.setdefault("needs", NEEDS)
        if "backend" in allowed and "backend" not in config:
            backend = backend if backend is not None else backend_from_flags(args)
            config["backend"] = backend
        methods[name] = config
    return methods


def agent_config_for_seed(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    cfg = dict(config)
    if "seed" in agent_options(cfg["type"]):
        cfg.setdefault("seed", seed)  # e.g. Random draws a different sequence per seed index
    return cfg


# --------------------------------------------------------------------------------------------
# One run, and the final evaluation


def eval_spec(pairs: Sequence[ImagePair], niqe_kwargs: Mapping[str, Any], ema: float = 0.0) -> EvalSpec:
    """PSNR_Y (2 px border, 8-bit output) and NIQE on one set; NIQE failures are recorded, not warned."""
    return EvalSpec([EvalSet("eval", list(pairs))], metrics=("psnr", "niqe"), metric_kwargs={"niqe": dict(niqe_kwargs)},
                    ema=ema, quiet=True)


# Result files record it: runs up to the ninth scored the probe's PSNR_Y uncropped and unrounded (their
# settings lack the key), so they never merge with later ones.
PROBE_PSNR = f"y, {SCALE} px border, 8-bit"


def probe_psnr() -> al.PSNRObjective:
    """The probe's PSNR_Y, measured as :func:`eval_spec` measures it (``SCALE`` px border, 8-bit output),
    so the guard watches the PSNR the run is judged on."""
    return al.PSNRObjective(device="cpu", crop_border=SCALE, quantize=True)


def eval_record(scores: Scores) -> dict[str, Any]:
    """NIQE and PSNR_Y per evaluation image; a NIQE that raised is NaN, with its error in ``niqe_errors``."""
    res = scores.sets["eval"]
    # evaluate() scores NaN where a metric raised (NIQE's LinAlgError on a flat, collapsed output)
    # and lists why in settings["failures"] as "image: metric: error".
    errors = {}
    for note in res.settings.get("failures", []):
        name, metric, why = note.split(": ", 2)
        if metric == "niqe":
            errors[name] = why
    per_image = {name: {"niqe": sc.get("niqe", math.nan), "psnr_y": sc["psnr"]} for name, sc in res.per_image.items()}
    # Any failed image makes the mean missing: dropping it would reward the collapse.
    mean = {m: (math.nan if any(not _finite(s[m]) for s in per_image.values())
                else statistics.fmean(s[m] for s in per_image.values())) for m in METRICS}
    return {"per_image": per_image, "mean": mean, "niqe_errors": errors, "seconds": scores.seconds}


def evaluate_model(model: nn.Module, pairs: Sequence[ImagePair], niqe_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`eval_record` of ``model`` on ``pairs``."""
    return eval_record(score(model, eval_spec(pairs, niqe_kwargs), SCALE))


def stage_summary(rec: al.StageRecord) -> dict[str, Any]:
    """The parts of a stage record the result file keeps (the full records are in the run dir)."""
    return {"stage": rec.stage, "iteration": rec.iteration, "weights": rec.weights, "next_weights": rec.next_weights,
            "scores": rec.scores, "per_image": rec.per_image, "fallback": rec.fallback, "errors": rec.errors,
            "timings": rec.timings}


def sum_timings(records: Sequence[al.StageRecord]) -> dict[str, float]:
    def total(*keys: str) -> float:
        return float(sum(r.timings.get(k, 0.0) for r in records for k in keys))
    return {"train_s": total("train_s"), "scoring_s": total("restore_s", "score_s"), "agent_s": total("agent_s")}


def make_setup(args: argparse.Namespace, split: Split, methods: Mapping[str, Mapping[str, Any]],
               niqe_kwargs: Mapping[str, Any]) -> Setup:
    """The harness setup of this benchmark: its split, loss repository, NIQE + PSNR_Y objectives and EMA scoring."""
    def stream(seed: int) -> PatchPairStream:
        return PatchPairStream(split.train, SCALE, args.patch, args.batch, seed=seed)

    return Setup(
        model=small_sr,
        loss=lambda: al.AgentWeightedLoss(args.initial_weights, terms=TERM_OPTIONS, constraints=args.constraints),
        objectives=lambda device: [al.PyiqaObjective("niqe", device="cpu", **niqe_kwargs), probe_psnr()],
        stream=stream, trial_stream=lambda seed: stream(seed + 1_000_003), probe_lq=split.probe_lq,
        probe_references=split.probe_hr, agent_config=lambda m, seed: agent_config_for_seed(methods[m], seed),
        methods=tuple(methods), stage_length=args.stage_iters, stages=args.stages, scale=SCALE,
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)), lr=TRAIN_LR,
        warm=warm_spec(split.train, pretrain_settings(args), args.cache_dir or None),
        eval=eval_spec(split.eval_pairs, niqe_kwargs, args.eval_ema),
        seed_before_model=False,  # the network loads the start; the discriminator's init follows the seed
        run_dir=lambda m, seed: Path(args.run_dir) / m / f"seed{seed}")


def run_json(res: MethodResult) -> dict[str, Any]:
    """One run's entry in the result file."""
    assert res.scores is not None
    ev, ev_last = eval_record(res.scores), eval_record(res.scores_last) if res.scores_last is not None else None
    return {"seed": res.seed, "agent_config": res.agent_config, "eval": ev, "eval_last": ev_last,
            "stages": [stage_summary(r) for r in res.history], "final_weights": res.history[-1].weights,
            "fallbacks": sum(r.fallback is not None for r in res.history),
            "timings": {**sum_timings(res.history), "eval_s": ev["seconds"] + (ev_last or {}).get("seconds", 0.0)},
            "trial_iterations": res.trial_iterations, "wall_s": res.wall_s, "run_dir": str(res.run_dir)}


# --------------------------------------------------------------------------------------------
# Report


def summarize(results: Mapping[str, Any], baseline: str = "fixed") -> dict[str, Any]:
    """Per method: mean/std of the final eval scores; paired statistics against the baseline."""
    lower = {"niqe": True, "psnr_y": False}
    summary: dict[str, Any] = {}
    base_runs = {r["seed"]: r for r in results["methods"].get(baseline, {}).get("runs", [])}
    for method, data in results["methods"].items():
        runs = data["runs"]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                                 "niqe_failures": sum(len(r["eval"]["niqe_errors"]) for r in runs)}
        for m in METRICS:
            mean, std, n = mean_std([r["eval"]["mean"][m] for r in runs])
            entry[m] = {"mean": mean, "std": std, "n": n}
        if method != baseline and base_runs:
            paired = [(r, base_runs[r["seed"]]) for r in runs if r["seed"] in base_runs]
            entry["paired_seeds"] = [r["seed"] for r, _ in paired]
            entry["vs_" + baseline] = {
                m: asdict(paired_interval([r["eval"]["mean"][m] for r, _ in paired],
                                          [b["eval"]["mean"][m] for _, b in paired], lower[m]))
                for m in METRICS}
        entry["timings"] = {k: sum(r["timings"][k] for r in runs) for k in ("train_s", "scoring_s", "agent_s", "eval_s")}
        entry["wall_s"] = sum(r["wall_s"] for r in runs)
        summary[method] = entry
    return summary


def _pm(mean: float, std: float, digits: int) -> str:
    if not _finite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if _finite(std) else f"{mean:.{digits}f} (1 seed)"


def _ci(s: Mapping[str, Any], digits: int) -> str:
    if not _finite(s["lo"]):
        return f"{s['mean']:+.{digits}f} [n/a]" if _finite(s["mean"]) else "n/a"
    return f"{s['mean']:+.{digits}f} [{s['lo']:+.{digits}f}, {s['hi']:+.{digits}f}]"


def paired_section(results: Mapping[str, Any], summary: Mapping[str, Any], baseline: str) -> list[str]:
    """The paired-difference tables (interval, verdict, per seed) of every method against ``baseline``."""
    lines: list[str] = []
    w = _name_width(results)
    key = "vs_" + baseline
    compared = {m: e for m, e in summary.items() if key in e}
    if not compared:
        lines.append(f"\n(no paired comparison: method {baseline!r} was not run)")
    else:
        lines.append(f"\n## Paired difference vs {baseline} (same seed): mean [95 % Student-t interval]")
        lines.append(f"{'method':<{w}} {'n':>2} {'ΔNIQE':>26} {'ΔNIQE %':>8} {'NIQE verdict':>13} {'p flip':>7} "
                     f"{'ΔPSNR_Y dB':>26} {'PSNR verdict':>13}")
        for method, e in compared.items():
            n, p = e[key]["niqe"], e[key]["psnr_y"]
            rel = f"{n['relative_pct']:+.1f} %" if _finite(n["relative_pct"]) else "n/a"
            pf = n.get("p_sign_flip", math.nan)
            lines.append(f"{method:<{w}} {n['n']:>2} {_ci(n, 3):>26} {rel:>8} {n['verdict']:>13} "
                         f"{_fmt(pf, 3):>7} {_ci(p, 3):>26} {p['verdict']:>13}")
        lines.append("verdict: better/worse when the interval excludes 0 (NIQE lower = better, PSNR higher = better); "
                     "p flip: exact two-sided sign-flip test of the NIQE differences")
        lines.append(f"\n## Per-seed differences vs {baseline} (ΔNIQE / ΔPSNR_Y dB)")
        base = {r["seed"]: r["eval"]["mean"] for r in results["methods"][baseline]["runs"]}
        seeds = sorted(base)
        lines.append(f"{'method':<{w}} " + " ".join(f"{'seed ' + str(s):>17}" for s in seeds))
        for method in compared:
            mine = {r["seed"]: r["eval"]["mean"] for r in results["methods"][method]["runs"]}
            cells = []
            for s in seeds:
                if s not in mine:
                    cells.append(f"{'-':>17}")
                    continue
                dn, dp = mine[s]["niqe"] - base[s]["niqe"], mine[s]["psnr_y"] - base[s]["psnr_y"]
                cells.append(f"{_fmt(dn, 3, '+')} / {_fmt(dp, 3, '+')}".rjust(17))
            lines.append(f"{method:<{w}} " + " ".join(cells))
    return lines


def _name_width(results: Mapping[str, Any]) -> int:
    """The method column's width: long method names must not shift the other columns."""
    return max(24, *(len(m) for m in results["methods"]))


def format_report(results: Mapping[str, Any], summary: Mapping[str, Any], baseline: str = "fixed") -> str:
    lines: list[str] = []
    w = _name_width(results)
    n_eval = len(results["split"]["eval"])
    lines.append(f"\n## Final evaluation: {n_eval} images never trained on nor probed "
                 f"(mean over images; mean ± std over seeds)")
    lines.append(f"{'method':<{w}} {'seeds':>5} {'NIQE ↓':>17} {'PSNR_Y ↑ dB':>17} {'NIQE failed':>11}")
    s0 = results["start"]["eval"]["mean"]
    lines.append(f"{'start (S0)':<{w}} {'':>5} {_fmt(s0['niqe'], 3):>17} {_fmt(s0['psnr_y'], 3):>17}")
    for method, e in summary.items():
        lines.append(f"{method:<{w}} {len(e['seeds']):>5} {_pm(e['niqe']['mean'], e['niqe']['std'], 3):>17} "
                     f"{_pm(e['psnr_y']['mean'], e['psnr_y']['std'], 3):>17} {e['niqe_failures']:>11}")
    if any(e["niqe_failures"] for e in summary.values()):
        lines.append("NIQE failed = images whose NIQE raised (flat, collapsed output): recorded as NaN; "
                     "a seed with one counts as missing in the NIQE mean and the paired statistics.")
    lines += paired_section(results, summary, baseline)
    lines.append("\n## Time per method (s, summed over seeds): training, scoring (probe restore+score), agent, final eval")
    lines.append(f"{'method':<{w}} {'train':>8} {'scoring':>8} {'agent':>8} {'eval':>7} {'wall':>8} {'per run':>8}")
    for method, e in summary.items():
        t = e["timings"]
        per_run = e["wall_s"] / max(1, len(e["seeds"]))
        lines.append(f"{method:<{w}} {t['train_s']:>8.1f} {t['scoring_s']:>8.1f} {t['agent_s']:>8.1f} "
                     f"{t['eval_s']:>7.1f} {e['wall_s']:>8.1f} {per_run:>8.1f}")
    pre = results["start"]["pretrain"]
    pre_time = "cached" if pre["cached"] else f"{pre['seconds']:.1f} s"
    lines.append(f"pretraining: {pre_time}; S0 evaluation {results['start']['eval']['seconds']:.1f} s")
    return "\n".join(lines)


def _fmt(x: float | None, digits: int, sign: str = "") -> str:
    return f"{x:{sign}.{digits}f}" if _finite(x) else "n/a"


def plot_results(results: Mapping[str, Any], path: Path) -> None:
    """Left: eval NIQE vs PSNR_Y, one point per seed; right: mean final weights per method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    s0 = results["start"]["eval"]["mean"]
    ax1.scatter([s0["psnr_y"]], [s0["niqe"]], marker="*", s=160, c="k", label="start (S0)")
    methods = list(results["methods"])
    names = list(results["settings"].get("initial_weights") or INITIAL_WEIGHTS)
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        runs = results["methods"][method]["runs"]
        pts = [(r["eval"]["mean"]["psnr_y"], r["eval"]["mean"]["niqe"]) for r in runs]
        pts = [(p, n) for p, n in pts if _finite(p) and _finite(n)]
        ax1.scatter([p for p, _ in pts], [n for _, n in pts], label=method, alpha=0.8)
        means = [statistics.fmean(r["final_weights"][k] for r in runs) if runs else 0.0 for k in names]
        ax2.bar([j + i * width for j in range(len(names))], means, width, label=method)
    ax1.set_xlabel("eval PSNR_Y (dB, higher is better)")
    ax1.set_ylabel("eval NIQE  (lower is better)")
    ax1.set_title("final evaluation, one point per seed")
    ax1.legend(fontsize=8)
    ax2.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(names))], names)
    ax2.set_yscale("log")
    ax2.set_title("weights of the last stage (mean over seeds)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(json_safe(data), indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine result files of the same settings (e.g. methods run in two processes) and report")
    ap.add_argument("--methods", default="fixed,random,llm-paper,guided-trials60",
                    help=f"comma-separated; built-in: {', '.join(BUILTIN_METHODS)}")
    ap.add_argument("--method", action="append", metavar="NAME=PATH_OR_JSON",
                    help="add a method from an agent config (JSON string or JSON/YAML file); repeatable")
    for flag, help_ in (("--seeds", "number of seeds (0..N-1)"), ("--stages", "stages per run"),
                        ("--stage-iters", "iterations per stage"), ("--batch", "patches per batch"),
                        ("--patch", "HR patch size (px)"), ("--pretrain-iters", "L1 pretraining iterations")):
        key = flag[2:].replace("-", "_")
        ap.add_argument(flag, type=int, default=None, help=f"{help_} (default {DEFAULTS[key]}, --quick {QUICK[key]})")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds FIRST..FIRST+N-1 (more seeds later; --merge joins them to earlier files)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    ap.add_argument("--loss", type=parse_loss, default=dict(INITIAL_WEIGHTS), metavar="NAME=W,...",
                    help="the loss repository and its start weights, which Fixed keeps (default l1=1,fft=0.1,gan=0.01; "
                         "any registered term that downloads nothing, e.g. l1=1,mscn=0.1,gan=0.01)")
    ap.add_argument("--initial-weights", default="", metavar="NAME=W,...",
                    help="change some start weights of --loss (e.g. gan=0.1 for a mis-set start that an agent "
                         "should recover from); unnamed terms keep their --loss weight")
    ap.add_argument("--eval-ema", type=float, default=0.99, metavar="DECAY",
                    help="score the final evaluation on an EMA of the weights with this decay (default 0.99; "
                         "0 = the last iterate, as the first result files did)")
    ap.add_argument("--max-weight", type=float, default=10.0, help="WeightConstraints.max_weight")
    ap.add_argument("--max-step", type=float, default=2.0, help="WeightConstraints.max_step (factor per stage)")
    ap.add_argument("--out", default="benchmarks/results/quality.json", help="JSON results; the plot beside it, same name, .png")
    ap.add_argument("--run-dir", default="runs/bench_quality", help="stage records go to RUN_DIR/<method>/seed<k>")
    ap.add_argument("--niqe-params", default=None,
                    help=f"niqe_modelparameters.mat (default: {DEFAULT_NIQE_PARAMS} if present, else pyiqa's download)")
    ap.add_argument("--cache-dir", default="~/.cache/agentloss-bench", help="pretrained start cache ('' = none)")
    ap.add_argument("--torch-threads", type=int, default=2)
    ap.add_argument("--gguf", help="a GGUF chat model for every LLM-based method")
    ap.add_argument("--openai-url", help="an OpenAI-compatible endpoint for every LLM-based method")
    ap.add_argument("--openai-model", default="default")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads for LLM-based methods")
    args = ap.parse_args(argv)
    if args.gguf and args.openai_url:
        ap.error("--gguf and --openai-url exclude each other")
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.seeds, args.stages, args.stage_iters, args.batch) < 1 or args.pretrain_iters < 0:
        ap.error("--seeds, --stages, --stage-iters and --batch must be positive")
    if not 0.0 <= args.eval_ema < 1.0:
        ap.error("--eval-ema must be in [0, 1): 0 = the last iterate, else the EMA decay (e.g. 0.99)")
    if args.patch % SCALE:
        ap.error(f"--patch must be a multiple of {SCALE}")
    try:
        args.initial_weights = parse_weights(args.initial_weights, base=args.loss)
    except argparse.ArgumentTypeError as e:
        ap.error(f"--initial-weights: {e}")
    args.constraints = al.WeightConstraints(max_weight=args.max_weight, max_step=args.max_step)
    return args


def parse_loss(text: str) -> dict[str, float]:
    """``"l1=1,mscn=0.1,gan=0.01"`` -> the loss repository with its start weights, in that order.

    Terms must be registered and download nothing (the benchmark runs offline).

    >>> parse_loss("l1=1,mscn=0.1,gan=0.01")
    {'l1': 1.0, 'mscn': 0.1, 'gan': 0.01}
    """
    from agentloss.losses import LOSS_REGISTRY, resolve_loss_name

    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name = part.partition("=")[0].strip().lower()
        try:
            key = resolve_loss_name(name)
        except KeyError as e:
            raise argparse.ArgumentTypeError(str(e.args[0])) from None
        if LOSS_REGISTRY[key].downloads:
            raise argparse.ArgumentTypeError(f"{name!r} downloads {LOSS_REGISTRY[key].downloads}; the benchmark "
                                             "uses terms that need no download")
        weights[name] = 0.0
    if not weights:
        raise argparse.ArgumentTypeError("expected NAME=WEIGHT,... with at least one term")
    return parse_weights(text, base=weights)


def parse_weights(text: str, base: Mapping[str, float] = INITIAL_WEIGHTS) -> dict[str, float]:
    """``"gan=0.1"`` or ``"l1=1,fft=0.1,gan=0.1"`` -> the full weight dict (unnamed terms keep ``base``'s).

    >>> parse_weights("gan=0.1")
    {'l1': 1.0, 'fft': 0.1, 'gan': 0.1}
    """
    weights = dict(base)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in weights:
            raise argparse.ArgumentTypeError(f"{part!r}: expected NAME=VALUE with NAME one of {', '.join(weights)}")
        try:
            w = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
        if not (math.isfinite(w) and w >= 0):
            raise argparse.ArgumentTypeError(f"{part!r}: a weight must be finite and >= 0")
        weights[name] = w
    return weights


def niqe_kwargs_for(args: argparse.Namespace) -> dict[str, Any]:
    if args.niqe_params:
        if not Path(args.niqe_params).is_file():
            raise FileNotFoundError(f"--niqe-params {args.niqe_params!r} is not a file")
        return {"pretrained_model_path": str(args.niqe_params)}
    return {"pretrained_model_path": str(DEFAULT_NIQE_PARAMS)} if DEFAULT_NIQE_PARAMS.is_file() else {}


def add_method_runs(into: dict[str, Any], methods: Mapping[str, Any], where: str, merged_from: Sequence[str]) -> None:
    """Add each method's runs to ``into`` (method -> ``{"runs": [...]}``), seeds in order; a seed that is
    already there is an error (``where`` names the file and what holds the methods)."""
    for name, m in methods.items():
        if name not in into:
            into[name] = m
            continue
        again = sorted({r["seed"] for r in into[name]["runs"]} & {r["seed"] for r in m["runs"]})
        if again:
            raise ValueError(f"{where} {name!r} seed(s) {again} are already in {list(merged_from)}")
        into[name]["runs"] = sorted([*into[name]["runs"], *m["runs"]], key=lambda r: r["seed"])  # more seeds


def merge_files(paths: Sequence[str], keys: Sequence[str],
                add: Callable[[dict[str, Any], dict[str, Any], str], None]) -> dict[str, Any]:
    """One result set from result files whose ``settings`` agree on ``keys``: the first file, then
    ``add(merged, data, path)`` for each other one (which raises on a seed already there)."""
    merged: dict[str, Any] | None = None
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if merged is None:
            merged = {k: v for k, v in data.items() if k != "summary"}
            merged["merged_from"] = [str(path)]
            continue
        diff = [k for k in keys if data["settings"].get(k) != merged["settings"].get(k)]
        if diff:
            raise ValueError(f"{path}: settings {diff} differ from {merged['merged_from'][0]}; cannot pair its runs")
        add(merged, data, str(path))
        merged["merged_from"].append(str(path))
    if merged is None:
        raise ValueError("nothing to merge")
    return merged


def merge_results(paths: Sequence[str]) -> dict[str, Any]:
    """One result set from files made with the same settings (the methods of each are added)."""
    # What a run's result depends on must match; the number of seeds need not (each run carries its seed).
    keys = ("stages", "stage_iters", "batch", "patch", "pretrain_iters", "initial_weights", "constraints", "eval_ema",
            "probe_psnr")
    return merge_files(paths, keys, lambda merged, data, path: add_method_runs(
        merged["methods"], data["methods"], f"{path}: method", merged["merged_from"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        results = merge_results(args.merge)
        results["summary"] = summarize(results)
        out = Path(args.out)
        write_json(out, results)
        plot_results(results, out.with_suffix(".png"))
        print(format_report(results, results["summary"]))
        if "random" in results["methods"]:
            print("\n".join(paired_section(results, summarize(results, "random"), "random")))
        print(f"\nresults: {out}; plot: {out.with_suffix('.png')}")
        return results
    torch.set_num_threads(args.torch_threads)
    methods = resolve_methods(args)  # bad configs fail here, before any training

    def log(msg: str) -> None:
        print(msg, flush=True)

    niqe_kwargs = niqe_kwargs_for(args)
    split = build_split()
    settings = {k: getattr(args, k) for k in ("seeds", "stages", "stage_iters", "batch", "patch", "pretrain_iters",
                                                "quick", "torch_threads", "run_dir", "eval_ema")}
    settings.update(initial_weights=args.initial_weights, terms=TERM_OPTIONS, constraints=args.constraints.to_dict(),
                    needs=NEEDS, lr=TRAIN_LR, niqe_params=niqe_kwargs.get("pretrained_model_path"), probe_psnr=PROBE_PSNR,
                    argv=list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    results: dict[str, Any] = {"settings": settings, "split": split.description, "start": None,
                               "methods": {name: {"config": cfg, "runs": []} for name, cfg in methods.items()}}

    def save(comp: Comparison, res: MethodResult) -> None:
        if results["start"] is None:
            assert comp.start.scores is not None
            results["start"] = {"pretrain": {**comp.start.info, "settings": pretrain_settings(args)},
                                "eval": eval_record(comp.start.scores)}
        results["methods"][res.method]["runs"].append(run_json(res))
        write_json(out, results)  # after every run: a partial file holds complete pairs

    log(f"pretraining SmallSR with L1 ({args.pretrain_iters} iterations, or from the cache) ...")
    compare(make_setup(args, split, methods, niqe_kwargs), log=log, on_run=save)
    summary = summarize(results)
    results["summary"] = summary
    write_json(out, results)
    plot_results(results, out.with_suffix(".png"))
    log(format_report(results, summary))
    if "random" in results["methods"]:
        log("\n".join(paired_section(results, summarize(results, "random"), "random")))
    log(f"\nresults: {out}; plot: {out.with_suffix('.png')}; stage records: {args.run_dir}/<method>/seed<k>/")
    return results


if __name__ == "__main__":
    main()
