"""What a comparison shows: a table shaped like the paper's Table 1, before/after crops, and curves.

The table has one row per method (the start, then Fixed, Random, the agent) and, for each
evaluation set and for the average over sets, one column per metric with its direction
(↓ lower is better, ↑ higher is better); the best entry of each column is in bold.

>>> from types import SimpleNamespace
>>> comp = SimpleNamespace(start_eval={"Set5": {"niqe": 6.0, "psnr": 30.0}, "Set14": {"niqe": 5.0, "psnr": 28.0}},
...     results={"fixed": SimpleNamespace(evaluation={"Set5": {"niqe": 5.5, "psnr": 29.9}, "Set14": {"niqe": 4.5}}),
...              "agent": SimpleNamespace(evaluation={"Set5": {"niqe": 5.2, "psnr": 29.8}, "Set14": {"niqe": 4.6}})},
...     config=None, skipped_sets=[])
>>> print(format_table(comp, directions={"niqe": False, "psnr": True}))
| Method | Set5 NIQE↓ | Set5 PSNR↑ | Set14 NIQE↓ | Set14 PSNR↑ | Average NIQE↓ | Average PSNR↑ |
|---|---|---|---|---|---|---|
| Start | 6.000 | **30.000** | 5.000 | **28.000** | 5.500 | **29.000** |
| Fixed | 5.500 | 29.900 | **4.500** | n/a | 5.000 | n/a |
| Agent | **5.200** | 29.800 | 4.600 | n/a | **4.900** | n/a |
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

LABELS = {"start": "Start", "fixed": "Fixed", "random": "Random", "agent": "Agent"}


def direction_table(cfg: Any) -> dict[str, bool]:
    """metric -> higher is better (pyiqa's table), for the config's evaluation metrics."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    from .build import eval_metrics

    return {m: not DEFAULT_CONFIGS.get(m, {}).get("lower_better", False) for m in eval_metrics(cfg)}


def _rows(comp: Any) -> dict[str, dict[str, dict[str, float]]]:
    rows = {"start": comp.start_eval}
    several = len(getattr(comp, "seeds", ())) > 1  # then each row is the mean over the seeds
    rows.update({m: comp.mean_evaluation(m) if several else r.evaluation for m, r in comp.results.items()})
    return rows


def _with_average(evals: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out = dict(evals)
    if len(evals) < 2:
        return out  # an average of one set repeats it
    metrics = list(dict.fromkeys(k for s in evals.values() for k in s))
    avg = {}
    for m in metrics:
        vals = [s.get(m) for s in evals.values()]
        # Averaging over the sets a method happens to have would compare different sets: n/a instead.
        if all(v is not None and math.isfinite(v) for v in vals):
            avg[m] = sum(vals) / len(vals)
    out["Average"] = avg
    return out


def format_table(comp: Any, directions: dict[str, bool] | None = None, digits: int = 3) -> str:
    """A Markdown table (see the module docstring); ``directions``: metric -> higher is better."""
    if directions is None:
        directions = direction_table(comp.config)
    rows = {m: _with_average(e) for m, e in _rows(comp).items()}
    sets = list(dict.fromkeys(s for e in rows.values() for s in e))
    cols = [(s, m) for s in sets for m in dict.fromkeys(k for e in rows.values() for k in e.get(s, {}))]
    best: dict[tuple[str, str], float] = {}
    for s, m in cols:
        vals = [e[s][m] for e in rows.values() if m in e.get(s, {}) and math.isfinite(e[s][m])]
        if vals:
            best[(s, m)] = max(vals) if directions.get(m, True) else min(vals)
    head = ["Method"] + [f"{s} {m.upper()}{'↑' if directions.get(m, True) else '↓'}" for s, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, e in rows.items():
        cells = [LABELS.get(method, method)]
        for s, m in cols:
            v = e.get(s, {}).get(m)
            if v is None:
                cells.append("n/a")
                continue
            text = f"{v:.{digits}f}"
            cells.append(f"**{text}**" if best.get((s, m)) == v else text)
        lines.append("| " + " | ".join(cells) + " |")
    if getattr(comp, "skipped_sets", None):
        lines.append("")
        lines.extend(f"skipped: {note}" for note in comp.skipped_sets)
    return "\n".join(lines)


def _crop_box(gt: torch.Tensor, size: int) -> tuple[int, int]:
    """The most detailed ``size`` window (highest gradient energy) so differences are visible."""
    g = gt.mean(0)
    energy = (g[1:, :-1] - g[:-1, :-1]).abs() + (g[:-1, 1:] - g[:-1, :-1]).abs()
    if min(energy.shape) < size:  # the image is (nearly) the crop: take it whole
        return 0, 0
    pooled = torch.nn.functional.avg_pool2d(energy[None, None], size, stride=max(1, size // 4))[0, 0]
    idx = int(pooled.argmax())
    y, x = divmod(idx, pooled.shape[1])
    return y * max(1, size // 4), x * max(1, size // 4)


def crops_figure(cfg: Any, models: dict[str, torch.nn.Module], sets: list[Any], device: torch.device,
                 path: str | os.PathLike[str], images: int = 3, size: int = 96) -> Path:
    """Before/after crops: LQ (nearest-upsampled), each method, GT — one row per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..datasets.evaluation import _padded
    from .build import pad_multiple

    pairs = [p for s in sets for p in s.pairs][:images]
    if not pairs:
        raise ValueError("no evaluation images to crop")
    cols = ["LQ", *[LABELS.get(m, m) for m in models], "GT"]
    fig, axes = plt.subplots(len(pairs), len(cols), figsize=(2.2 * len(cols), 2.3 * len(pairs)), squeeze=False)
    scale = cfg.scale
    for i, pair in enumerate(pairs):
        gt = pair.gt if pair.gt is not None else None
        ref = gt if gt is not None else torch.nn.functional.interpolate(pair.lq[None], scale_factor=scale)[0]
        s = min(size, *ref.shape[-2:])
        y, x = _crop_box(ref, s)
        y, x = y - y % scale, x - x % scale
        tiles = [torch.nn.functional.interpolate(pair.lq[None], scale_factor=scale, mode="nearest")[0]]
        with torch.no_grad():
            for m in models.values():
                was = m.training
                m.eval()
                out = _padded(m, pair.lq[None].to(device), scale, pad_multiple(cfg))[0].clamp(0, 1).cpu()
                m.train(was)
                tiles.append(out)
        tiles.append(gt if gt is not None else torch.zeros_like(tiles[0]))
        for j, (t, name) in enumerate(zip(tiles, cols)):
            ax = axes[i][j]
            ax.imshow(t[..., y: y + s, x: x + s].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i][0].set_ylabel(pair.name, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def comparison_plot(comp: Any, path: str | os.PathLike[str]) -> Path:
    """Probe scores of every method over the stages (one panel per objective) and the weights (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..plotting import draw_weights

    results = comp.results
    objectives = list(dict.fromkeys(k for r in results.values() for rec in r.history for k in rec.scores))
    losses = list(dict.fromkeys(k for r in results.values() for rec in r.history for k in rec.weights))
    panels = len(objectives) + len(losses)
    from ..records import read_meta

    arrows: dict[str, str] = {}
    for r in results.values():  # each objective's direction, from the run's own record
        for o in read_meta(r.run_dir).get("objectives", []) if r.run_dir else []:
            arrows[o["name"]] = "↑" if o.get("higher_is_better") else "↓"
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.2), squeeze=False)
    for method, r in results.items():
        stages = [rec.stage for rec in r.history]
        for k, name in enumerate(objectives):
            vals = [rec.scores.get(name) for rec in r.history]
            axes[0][k].plot(stages, [float("nan") if v is None else v for v in vals], marker="o", ms=3,
                            label=LABELS.get(method, method))
            axes[0][k].set_title(f"probe {name} {arrows.get(name, '')}".strip())
        for k, name in enumerate(losses):
            ax = axes[0][len(objectives) + k]
            draw_weights(ax, r.history, name, label=LABELS.get(method, method))  # the same convention as curves.png
            ax.set_yscale("log")
            ax.set_title(f"weight {name}")
    for ax in axes[0]:
        ax.set_xlabel("stage")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(out_dir: str | os.PathLike[str]) -> str:
    """Re-plot a ``run`` or ``compare`` directory's curves and return its table (or stages) as text."""
    import json

    from ..plotting import plot_run

    out = Path(out_dir)
    lines = []
    runs = [d for d in sorted(out.iterdir()) if (d / "stages.jsonl").is_file()] if out.is_dir() else []
    if (out / "stages.jsonl").is_file():
        runs.insert(0, out)
    if not runs:
        raise FileNotFoundError(f"{out}: no stages.jsonl here or in its sub-folders (not a run or compare directory)")
    for d in runs:
        lines.append(f"curves: {plot_run(d)}")
    if (out / "table.md").is_file():
        lines.append((out / "table.md").read_text(encoding="utf-8").rstrip())
    elif (out / "evaluation.json").is_file():
        ev = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))["evaluation"]
        for s, scores in ev.items():
            lines.append(f"{s}: " + "  ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return "\n".join(lines)
