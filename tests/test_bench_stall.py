"""benchmarks/bench_stall.py, smoke: a stub endpoint that answers after 0.2 s, two tiny stages, sync and async.

The synchronous stage end must stand still for the agent's delay; the asynchronous one must not
(the delay is paid in the background, and the answer is applied during the next stage)."""

from __future__ import annotations

from types import ModuleType

import pytest

DELAY = 0.2


@pytest.fixture(scope="module")
def bench(load_benchmark) -> ModuleType:
    return load_benchmark("bench_stall")


def test_stub_answers_after_its_delay(bench):
    from agentloss.backends import create_backend

    with bench.StubEndpoint(bench.format_answer({"l1": 1.0, "gan": 0.02}), DELAY) as stub:
        backend = create_backend({"type": "openai", "base_url": stub.base_url, "model": stub.model, "timeout": 10})
        result = backend.chat([{"role": "user", "content": "weights?"}])
    assert result.text.startswith("Weights: l1:gan=1:0.02") and result.seconds >= DELAY
    assert stub.requests == 1


@pytest.mark.slow
def test_async_stall_excludes_the_agent_delay(bench):
    setup = bench.Setup(width=8, depth=1, patch=16, batch=2, probe_crop=64, probe_grid=(1, 2), objectives=("psnr",))
    probe, objectives = bench.make_probe(setup), bench.make_objectives(setup.objectives)
    # A stage several times the delay, so that the asynchronous answer arrives within the next stage.
    stage_length = bench.stage_length_for(DELAY, bench.measure_iteration(setup, steps=10, warmup=2), 3.0)
    runs = []
    with bench.StubEndpoint(bench.format_answer(bench.STUB_WEIGHTS), DELAY) as stub:
        for spec, agent in [(bench.RunSpec("none", "fixed"), bench.al.FixedAgent())] + [
                (bench.RunSpec("stub", mode, DELAY), bench.llm_agent(stub.base_url, stub.model, timeout=10,
                                                                      grammar=False)) for mode in ("sync", "async")]:
            runs.append(bench.run_one(spec, setup, probe, objectives, agent, stage_length=stage_length, stages=2,
                                      progress=lambda _: None))
        assert stub.requests == 2  # one decision per agent run: the last stage end asks nothing
    fixed, sync, asyn = runs

    s1 = sync["stage_ends"][0]
    assert s1["asked"] and s1["agent_wait_s"] >= DELAY and s1["stall_s"] >= s1["probe_s"] + DELAY
    assert s1["applied_iteration"] is None and s1["next_weights"] == bench.STUB_WEIGHTS

    a1 = asyn["stage_ends"][0]
    assert a1["agent_s"] >= DELAY  # the agent did take the delay, in the background
    assert a1["agent_wait_s"] == 0.0 and a1["stall_s"] < DELAY and a1["stall_s"] - a1["probe_s"] < DELAY / 2
    assert stage_length < a1["applied_iteration"] < 2 * stage_length  # applied while stage 2 trained
    assert a1["next_weights"] == bench.STUB_WEIGHTS and a1["fallback"] is None

    summary = [bench.summarize(r, fixed, stage_length) for r in runs]
    assert [r["label"] for r in summary] == ["Fixed", "stub 0.2s sync", "stub 0.2s async"]
    assert "target_stall" not in summary[1] and summary[2]["target_overhead"] in ("PASS", "FAIL")
    assert summary[1]["stall_per_asking_end_s"] > summary[2]["stall_per_asking_end_s"]
    table = bench.markdown_tables({"settings": {"stage_length": stage_length, "stages": 2, "stage_s": 1.0,
                                                "fixed_iteration_s": fixed["iteration_s"]},
                                   "runs": runs, "summary": summary})
    assert table.count("| stub 0.2s async |") == 3  # two stage ends and the run's summary line
