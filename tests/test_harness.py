"""The comparison harness: a tiny config end to end over seeds, EMA scoring, the cached warm start, the
registered ``small_sr`` backbone, and no import cycle inside ``agentloss.tasks``."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentloss.backbones import create_backbone, list_backbones, load_backbone
from agentloss.backbones.small import SmallSR
from agentloss.cli import main
from agentloss.tasks import harness
from agentloss.tasks.config import load_config
from agentloss.tasks.runner import agent_config, run, setup_from_config
from agentloss.tasks.warmstart import WarmStart, warm_start

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "task": "cisr",
    "backbone": {"name": "small_sr", "scale": 2, "options": {"width": 8, "depth": 1}},
    "losses": {"l1": 1.0, "fft": 0.1},
    "objectives": [{"name": "psnr"}],
    "agent": {"type": "fixed"},
    "train": {"stage_length": 2, "total_iters": 4},
    "data": {"patch": 32, "batch": 2},
    "probe": {"count": 1, "size": 64},
    "eval": {"size": 64, "max_images": 1},
}


def tiny(tmp_path: Path, **over) -> dict:
    return {**TINY, "out": str(tmp_path / "out"), **over}


def test_harness_runs_seeds_outside_methods_inside(tmp_path):
    cfg = load_config(tiny(tmp_path, compare=["fixed", "random"], train={"stage_length": 2, "total_iters": 4,
                                                                         "pretrain_iters": 2}))
    order = []
    comp = harness.compare(setup_from_config(cfg, seeds=[0, 1]), on_run=lambda c, r: order.append((r.seed, r.method)))
    assert order == [(0, "fixed"), (0, "random"), (1, "fixed"), (1, "random")]
    assert [r.run_dir for r in comp.runs][:2] == [cfg.out_dir / "fixed" / "seed0", cfg.out_dir / "random" / "seed0"]
    by = {(r.seed, r.method): r for r in comp.runs}
    assert by[0, "fixed"].history[0].scores == by[1, "random"].history[0].scores  # one start for every run
    assert by[0, "fixed"].history[-1].scores != by[1, "fixed"].history[-1].scores  # another seed: other batches
    assert comp.seeds == [0, 1] and set(comp.results) == {"fixed", "random"}
    mean = comp.mean_evaluation("fixed")["photos"]["psnr"]
    assert mean == pytest.approx((by[0, "fixed"].evaluation["photos"]["psnr"]
                                  + by[1, "fixed"].evaluation["photos"]["psnr"]) / 2)


def test_agent_configs_per_seed():
    cfg = load_config({**TINY, "agent": {"type": "random"}})
    assert agent_config(cfg, "agent") == {"type": "random", "seed": 0}  # the config's seed, as before (default 0)
    assert agent_config(cfg, "agent", 3) == {"type": "random", "seed": 3} == agent_config(cfg, "random", 3)
    assert agent_config(load_config({**TINY, "agent": {"type": "random", "seed": 7}}), "agent", 3)["seed"] == 7
    assert agent_config(cfg, "fixed", 3) == {"type": "fixed"}


def test_compare_cli_with_seeds_and_methods(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps(tiny(tmp_path)))
    assert main(["compare", str(f), "--seeds", "3,4", "--methods", "fixed,random", "--no-progress"]) == 0
    assert "| Random |" in capsys.readouterr().out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["seeds"] == [3, 4] and set(res["methods"]["random"]["runs"]) == {"3", "4"}
    assert res["methods"]["random"]["runs"]["3"]["run_dir"].endswith("seed3")
    assert main(["compare", str(f), "--methods", "fixed,nope"]) == 2  # the config's validation names it


def test_small_sr_is_a_registered_backbone(tmp_path):
    torch.manual_seed(0)
    registered = create_backbone("small_sr", 2)
    torch.manual_seed(0)
    direct = SmallSR()
    assert all(torch.equal(a, b) for a, b in zip(registered.state_dict().values(), direct.state_dict().values()))
    assert "small_sr" in list_backbones(include_demo=True) and "small_sr" not in list_backbones()
    assert create_backbone("small_sr", 3)(torch.rand(1, 3, 8, 8)).shape == (1, 3, 24, 24)
    torch.save({"params": registered.state_dict()}, tmp_path / "s.pth")
    loaded = load_backbone("small_sr", tmp_path / "s.pth", scale=2)
    assert all(torch.equal(a, b) for a, b in zip(registered.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ValueError, match="unknown config key"):
        create_backbone("small_sr", 2, widht=8)
    f = tmp_path / "small.yaml"  # usable from a YAML config
    f.write_text("task: cisr\nbackbone: {name: small_sr, scale: 2}\nlosses: {l1: 1.0}\nobjectives: [{name: psnr}]\n")
    assert load_config(f).scale == 2


def test_ema_evaluation_differs_from_the_last_iterate(tmp_path):
    base = tiny(tmp_path, train={"stage_length": 2, "total_iters": 4, "lr": 1e-2})
    last = run(load_config({**base, "out": str(tmp_path / "last")}), progress=False)
    ema = run(load_config({**base, "out": str(tmp_path / "ema"), "eval": {**TINY["eval"], "ema": 0.9}}),
              progress=False)
    # The agents see the last iterate either way: the same probe scores at every stage.
    assert [r.scores for r in ema.history] == [r.scores for r in last.history]
    assert ema.scores_last is not None and ema.scores_last.mean == last.evaluation
    assert ema.evaluation["photos"]["psnr"] != last.evaluation["photos"]["psnr"]
    saved = json.loads((tmp_path / "ema" / "evaluation.json").read_text())
    assert saved["evaluation_last"] == last.evaluation and (tmp_path / "ema" / "final_ema.pt").is_file()
    assert last.scores_last is None and load_config(TINY).eval.ema == 0.0  # default: the last iterate


def test_ema_resumes_exactly(tmp_path, crash_and_resume):
    base = tiny(tmp_path, train={"stage_length": 2, "total_iters": 6, "lr": 1e-2},
                eval={**TINY["eval"], "ema": 0.9})
    whole, resumed = crash_and_resume(base)
    assert resumed.evaluation == whole.evaluation  # the average was checkpointed with the model


def test_warm_start_is_cached_and_reused(tmp_path):
    calls = []

    def batches():
        calls.append(1)
        return iter(lambda: (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)), None)

    def model():
        return create_backbone("small_sr", 2, width=4, depth=1)

    spec = WarmStart(iters=3, lr=1e-2, seed=5, batches=batches, cache=tmp_path / "start.pt", key="k1")
    first, info = warm_start(model, spec)
    again, info2 = warm_start(model, spec)
    assert (info["cached"], info2["cached"], len(calls)) == (False, True, 1)  # the data is not even built
    assert all(torch.equal(first[k], again[k]) for k in first)
    torch.manual_seed(5)
    assert not torch.equal(first["body.0.weight"], model().state_dict()["body.0.weight"])  # it trained
    _, info3 = warm_start(model, dataclasses.replace(spec, key="k2"))
    assert not info3["cached"] and len(calls) == 2  # other settings: trained again
    # Through a config: the second comparison loads the start the first one made.
    cfg = load_config(tiny(tmp_path, compare=["fixed"], train={"stage_length": 2, "total_iters": 2,
                                                               "pretrain_iters": 2}))
    made = harness.compare(setup_from_config(cfg))
    reused = harness.compare(setup_from_config(cfg))
    assert not made.start.info["cached"] and reused.start.info["cached"]
    assert reused.runs[0].history[-1].scores == made.runs[0].history[-1].scores


def _task_imports(path: Path) -> set[str]:
    """The ``agentloss.tasks`` modules ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            out.update(n.split(".")[0] for n in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agentloss.tasks."):
            out.add(node.module.split(".")[2])
    return out


def test_no_import_cycle_in_tasks():
    modules = {p.stem: p for p in (ROOT / "agentloss" / "tasks").glob("*.py") if p.stem != "__init__"}
    graph = {m: _task_imports(p) & set(modules) for m, p in modules.items()}
    assert "runner" not in graph["report"] and "harness" in graph["runner"]
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m not in done:
            for n in graph[m]:
                visit(n, (*path, m))
            done.add(m)

    for m in graph:
        visit(m, ())
    for m in modules:  # and each one imports first, on its own
        subprocess.run([sys.executable, "-c", f"import agentloss.tasks.{m}"], check=True, cwd=ROOT)
