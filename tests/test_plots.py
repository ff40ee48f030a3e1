"""curves.png and compare.png draw the loss weights with one convention: stage s's weights over (s-1, s].

The figures are read back from the real plotting functions (a spy on ``Figure.savefig`` keeps the
figure), and each weight line is interpreted the way matplotlib draws it (its drawstyle's step
function), so a line drawn with ``where="post"`` would put the weights one stage late and fail.
"""

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import STEP_LOOKUP_MAP

import agentloss as al
from agentloss.plotting import plot_records
from agentloss.records import RecordWriter
from agentloss.tasks.report import comparison_plot

# The weights each stage trained with, different at every stage so that a one-stage shift is visible
# (S0's are the initial weights, which stage 1 also trains with: what the scheduler records).
L1 = [0.5, 0.5, 0.25, 2.0]
GAN = [0.02, 0.02, 0.04, 0.08]


def _records(scale: float = 1.0) -> list[al.StageRecord]:
    recs = []
    for s in range(len(L1)):
        nxt = {"l1": L1[s + 1] * scale, "gan": GAN[s + 1]} if s + 1 < len(L1) else None
        recs.append(al.StageRecord(stage=s, iteration=10 * s, weights={"l1": L1[s] * scale, "gan": GAN[s]},
                                   next_weights=nxt, scores={"niqe": 5.0 - 0.1 * s}))
    return recs


def _value_over(line, lo: float, hi: float) -> float:
    """The y of the horizontal piece of ``line`` (as drawn) that spans [lo, hi]."""
    xs, ys = STEP_LOOKUP_MAP[line.get_drawstyle()](np.asarray(line.get_xdata(), float),
                                                    np.asarray(line.get_ydata(), float))
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
        if y0 == y1 and x0 <= lo and x1 >= hi and x0 < x1:
            return float(y0)
    raise AssertionError(f"no horizontal piece over [{lo}, {hi}] in {list(zip(xs, ys))}")


@pytest.fixture
def saved_figures(monkeypatch):
    figs: list[Figure] = []
    real = Figure.savefig

    def spy(self, *a, **k):
        figs.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figs


def test_curves_png_draws_stage_s_weights_over_the_stage_it_trained(tmp_path, saved_figures):
    records = _records()
    plot_records(records, tmp_path / "curves.png")
    weights_ax = saved_figures[-1].axes[0]
    lines = {ln.get_label(): ln for ln in weights_ax.get_lines()}
    assert set(lines) == {"l1", "gan"}
    for name, line in lines.items():
        for s in range(1, len(records)):
            assert _value_over(line, s - 1, s) == pytest.approx(records[s].weights[name]), (name, s)
            assert records[s].weights[name] == records[s - 1].next_weights[name]  # decided at the end of s - 1
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_compare_png_draws_weights_like_curves_png(tmp_path, saved_figures):
    histories = {"fixed": _records(), "agent": _records(scale=3.0)}
    comp = SimpleNamespace(results={m: SimpleNamespace(history=h, run_dir=None) for m, h in histories.items()})
    comparison_plot(comp, tmp_path / "compare.png")
    fig = saved_figures[-1]
    for name in ("l1", "gan"):
        (ax,) = [a for a in fig.axes if a.get_title() == f"weight {name}"]
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"Fixed", "Agent"}
        for label, method in (("Fixed", "fixed"), ("Agent", "agent")):
            recs = histories[method]
            for s in range(1, len(recs)):
                assert _value_over(lines[label], s - 1, s) == pytest.approx(recs[s].weights[name]), (method, name, s)
                assert recs[s].weights[name] == recs[s - 1].next_weights[name]  # decided at the end of s - 1


def test_both_plots_draw_the_same_line_from_a_written_run(tmp_path, saved_figures):
    """The same run, plotted both ways: identical weight lines (data and drawstyle)."""
    w = RecordWriter(tmp_path / "run")
    for r in _records():
        w.append(r)
    al.plot_run(tmp_path / "run")
    curves = {ln.get_label(): ln for ln in saved_figures[-1].axes[0].get_lines()}
    comp = SimpleNamespace(results={"agent": SimpleNamespace(history=al.read_records(tmp_path / "run"), run_dir=None)})
    comparison_plot(comp, tmp_path / "compare.png")
    for name in ("l1", "gan"):
        (ax,) = [a for a in saved_figures[-1].axes if a.get_title() == f"weight {name}"]
        (line,) = ax.get_lines()
        assert line.get_drawstyle() == curves[name].get_drawstyle()
        np.testing.assert_array_equal(line.get_xdata(), curves[name].get_xdata())
        np.testing.assert_array_equal(line.get_ydata(), curves[name].get_ydata())
