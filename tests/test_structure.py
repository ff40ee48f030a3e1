"""The package's shape: no import cycle anywhere, the contracts at the bottom, and old records still readable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import agentloss as al
from agentloss.prompts.paper import prompt_variables
from agentloss.records import read_records
from agentloss.types import DecisionRecord, StageRecord

PACKAGE = Path(al.__file__).parent
DATA = Path(__file__).parent / "data"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules of the package that ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("agentloss"):
                # "from .x import y" may name a submodule y
                out.update(t for t in (f"{target}.{a.name}" for a in node.names) if t in MODULES)
                out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("agentloss"))
    return {m for m in out if m in MODULES and m != name}


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    # A package's __init__ importing its own submodules is how packages re-export, not a cycle.
    graph = {}
    for name, path in MODULES.items():
        deps = _imports(path, top_level_only=top_level_only)
        graph[name] = {d for d in deps if not (path.name == "__init__.py" and d.startswith(name + "."))
                       and not name.startswith(d + ".")}
    return graph


@pytest.mark.parametrize("top_level_only", [True, False], ids=["module-level", "including-lazy"])
def test_no_import_cycle_in_the_package(top_level_only):
    assert _cycle(_graph(top_level_only)) is None


def test_the_contracts_import_nothing_above_them():
    assert _imports(MODULES["agentloss.types"], top_level_only=False) <= {"agentloss.constraints"}
    assert _imports(MODULES["agentloss.constraints"], top_level_only=False) == set()
    for low in ("agentloss.types", "agentloss.records", "agentloss.objectives", "agentloss.prompts.templates",
                "agentloss.prompts.paper", "agentloss.prompts.fitting", "agentloss.prompts.replay"):
        ups = {m for m in _imports(MODULES[low], top_level_only=False)
               if m.startswith(("agentloss.agents", "agentloss.scheduler", "agentloss.tasks", "agentloss.cli"))}
        assert not ups, f"{low} imports upward: {ups}"


def test_records_of_the_previous_format_are_read_into_the_typed_record():
    llm = read_records(DATA / "stages_v0_llm.jsonl")
    assert [r.stage for r in llm] == [0, 1, 2, 3] and llm[0].decision is None
    first = llm[1].decision
    assert isinstance(first, DecisionRecord)
    assert first.proposed == {"l1": 5.0, "mse": 0.5} and first.thoughts == "much more l1"
    assert first.clipped and first.clipped[0].startswith("l1: 5 clipped to 2")  # the agent clipped, then
    assert first.feedback == ["looks flat"] and first.exchange[-1]["role"] == "assistant"
    assert llm[1].next_weights == {"l1": 2.0, "mse": 0.5}
    assert llm[2].fallback.startswith("no usable answer") and llm[2].decision.agent_fallback == llm[2].fallback
    assert llm[3].decision.skipped.startswith("final stage")
    guided = read_records(DATA / "stages_v0_guided.jsonl")
    assert [r.decision.action for r in guided[1:3]] == ["raise mse x1.6", "lower mse /1.6"]
    assert guided[1].decision.info["chosen"]["label"] == "A"
    # the prompt built from old records still reports the clipping
    from agentloss.prompts.replay import context_from_run

    ctx = context_from_run(llm[:3], {"objectives": [{"name": "contrast", "higher_is_better": True}]})
    notes = [n for s in prompt_variables(ctx)["stages"] for n in s["notes"]]
    assert any("clipped to the limits: l1: 5 clipped to 2" in n for n in notes)


def test_typed_record_round_trips_through_json():
    rec = StageRecord(1, 10, {"l1": 1.0}, {"psnr": 25.0}, next_weights={"l1": 2.0},
                      decision=DecisionRecord(proposed={"l1": 3.0}, clipped=["l1: 3 clipped to 2"], action="raise"))
    back = StageRecord.from_dict(rec.to_dict())
    assert back == rec and isinstance(back.decision, DecisionRecord)


def test_direct_weight_assignment_is_an_error_and_the_setter_validates():
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5})
    with pytest.raises(TypeError, match="set_weights"):
        loss_fn.weights["l1"] = 5.0
    with pytest.raises(TypeError, match="set_weights"):
        loss_fn.weights.update({"l1": 5.0})
    loss_fn.weights = {"l1": 2.0, "mse": 0.5}
    assert loss_fn.weights == {"l1": 2.0, "mse": 0.5}
    with pytest.raises(al.WeightError):
        loss_fn.weights = {"l1": -1.0, "mse": 0.5}
    snapshot = dict(loss_fn.weights)
    snapshot["l1"] = 9.0  # a copy is the user's to change
    assert loss_fn.weights["l1"] == 2.0


def test_public_api_exports_what_users_need():
    for name in ("SnapshotTrials", "plot_run", "BackendError", "ConfigError", "list_backbones", "DecisionRecord", "compare",
                 "StageScheduler", "AgentWeightedLoss"):
        assert name in al.__all__ and hasattr(al, name)
    for internal in ("RecordWriter", "LOSS_REGISTRY", "validate_weights"):
        assert internal not in al.__all__
    assert isinstance(al.PSNRObjective(), al.PyiqaObjective) and al.PSNRObjective().name == "psnr_y"
