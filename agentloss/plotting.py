"""Plots of a run: the loss weights and the objective scores per stage (like the paper's Figure 5).

One convention for every plot of weights (``draw_weights``): stage ``s``'s ``record.weights`` are the
weights trained between stage ends ``s - 1`` and ``s``, so they are drawn over ``(s - 1, s]``, ending
at the stage end whose scores they produced; stage 0 (S0, before training) is a single point.

Example:
    >>> import tempfile, agentloss as al
    >>> from agentloss.records import RecordWriter
    >>> d = tempfile.mkdtemp()
    >>> w = RecordWriter(d)
    >>> for s, (a, n) in enumerate([(1.0, 5.0), (0.5, 4.8), (0.7, 4.6)]):
    ...     w.append(al.StageRecord(stage=s, iteration=10 * s, weights={"l1": a, "gan": 0.01}, scores={"niqe": n}))
    >>> plot_run(d).name
    'curves.png'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .records import StageRecord, read_meta, read_records

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.lines import Line2D

__all__ = ["draw_weights", "plot_records", "plot_run"]


def _direction(meta: dict, name: str) -> str:
    for o in meta.get("objectives", []):
        if o.get("name") == name:
            return "↑ better" if o.get("higher_is_better") else "↓ better"
    return ""


def draw_weights(ax: Axes, records: Sequence[StageRecord], name: str, **style: Any) -> Line2D:
    """Draw loss weight ``name`` over the stages on ``ax`` and return the line.

    ``records[s].weights`` holds over ``(s - 1, s]`` (``where="pre"``): the span it trained, ending
    at the scores it produced. Weights that are missing or not positive are left out (log scales).
    """
    stages = [r.stage for r in records]
    values = [r.weights.get(name) for r in records]
    positive = [v if v is not None and v > 0 else float("nan") for v in values]
    (line,) = ax.step(stages, positive, where="pre", **style)
    return line


def plot_records(records: Sequence[StageRecord], out: str | os.PathLike[str], meta: dict | None = None,
                 title: str | None = None) -> Path:
    """Weights (log scale, the value in force during each stage) above one panel per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    meta = meta or {}
    if not records:
        raise ValueError("no stage records to plot")
    objectives = list(dict.fromkeys(k for r in records for k in r.scores))
    loss_names = list(dict.fromkeys(k for r in records for k in r.weights))
    fig, axes = plt.subplots(1 + len(objectives), 1, figsize=(7, 2.4 * (1 + len(objectives))), sharex=True,
                             squeeze=False)
    ax = axes[0, 0]
    for name in loss_names:
        draw_weights(ax, records, name, marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("loss weight")
    ax.legend(loc="best", fontsize=8, ncol=min(4, len(loss_names)))
    ax.grid(alpha=0.3)
    for i, name in enumerate(objectives, start=1):
        ax = axes[i, 0]
        xs = [r.stage for r in records if r.scores.get(name) is not None]
        ys = [r.scores[name] for r in records if r.scores.get(name) is not None]
        ax.plot(xs, ys, marker="o", ms=3, color=f"C{i + len(loss_names)}")
        fails = [r.stage for r in records if r.fallback]
        for s in fails:
            ax.axvline(s, color="red", alpha=0.2, lw=3)
        ax.set_ylabel(f"{name} ({_direction(meta, name)})" if _direction(meta, name) else name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("stage (0 = initial state)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    agent = meta.get("agent", {}).get("name")
    fig.suptitle(title or (f"agent: {agent}" if agent else "agentloss run"))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Plot ``run_dir/stages.jsonl`` to ``out`` (default ``run_dir/curves.png``)."""
    run_dir = Path(run_dir)
    return plot_records(read_records(run_dir), out or run_dir / "curves.png", read_meta(run_dir))
