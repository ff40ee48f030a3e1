"""Prompts ordered for the KV cache, and the prompt tokens each call really evaluated, per backend.

A runtime that keeps its KV cache between calls (llama.cpp) evaluates only the part of a prompt
after the prefix it shares with the previous call. The prompts of consecutive decisions of a real
run (a tiny model trained through ``StageScheduler``) must therefore extend each other: the part
that differs (the tail) must stay small and must not grow with the number of stages. Measured in
characters and in SmolLM2's tokens (its tokenizer and chat template, read from the embedded
GGUF), by llama-cpp-python's own prefix rule. Then the numbers the backends record: llama.cpp
in-process on the embedded SmolLM2 through a real run, an OpenAI-compatible server's usage and
timings, transformers (no reuse: the whole prompt).
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import agentloss as al
from agentloss.agents.asking import ask
from agentloss.backends import ChatResult, create_backend
from agentloss.backends.llama_cpp_backend import LlamaCppBackend
from agentloss.prompts import build_messages, estimate_tokens, fit_history

STAGES = 20
AT = (2, 10, 20)  # decisions compared with the one before: 1, 9 and 19 stages of history before them


class RecordingGuided(al.GuidedAgent):
    """The numbers-only guided agent, keeping the messages each layout's prompt had at each decision
    (rendered then: a stage's record gains its decision afterwards)."""

    def __init__(self, before_user_template: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.layouts: dict[str, list[list[dict[str, str]]]] = {"guided": [], "before": [], "paper": []}
        self.before = al.GuidedAgent(templates={"user": before_user_template}, **kw)

    def propose(self, context):  # type: ignore[no-untyped-def]
        self.layouts["guided"].append(self.messages(context))
        self.layouts["before"].append(self.before.messages(context))
        self.layouts["paper"].append(build_messages(context, needs_text="Lower noise."))
        return super().propose(context)


def tiny_run(agent: Any, stages: int, run_dir: Path | None = None, stage_length: int = 1) -> al.StageScheduler:
    """A real run: a small conv net denoising 16x16 crops; a no-reference goal and a guarded PSNR."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5})
    probe = torch.rand(2, 3, 16, 16)
    objectives = [
        al.CallableObjective(lambda x: float(x.std()), name="noise", higher_is_better=False),
        al.CallableObjective(lambda x, y: float(-10 * torch.log10(((x - y) ** 2).mean())), name="psnr",
                             higher_is_better=True, needs_reference=True),
    ]
    sched = al.StageScheduler(loss_fn, agent, objectives, model, probe, probe_references=probe.clone(),
                              stage_length=stage_length, total_stages=stages + 1, run_dir=run_dir)
    opt = torch.optim.SGD(model.parameters(), 0.05)
    for _ in range(stages * stage_length):
        x = torch.rand(2, 3, 16, 16)
        loss = loss_fn(model(x + 0.1 * torch.randn_like(x)), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return sched


@pytest.fixture(scope="module")
def prompts(load_benchmark) -> dict[str, list[list[dict[str, str]]]]:
    """Every decision's messages over a 20-stage run: the guided prompt as packaged, the same variables
    in the order the guided prompt had before (the benchmark's template), and the paper's prompt."""
    bench = load_benchmark("bench_prompt_cache")
    agent = RecordingGuided(bench.BEFORE_USER_TEMPLATE, backend="none", needs="Lower noise.")
    tiny_run(agent, STAGES)
    assert all(len(v) == STAGES for v in agent.layouts.values())
    return agent.layouts


def tail(previous: list[dict[str, str]], current: list[dict[str, str]], tokens: Any = None) -> int:
    """What a call evaluates after the previous one: ``current`` less the prefix it shares with ``previous``."""
    if tokens is not None:
        a, b = tokens(previous), tokens(current)
        return len(b) - LlamaCppBackend.cached_prefix(a, b)
    a, b = render(previous), render(current)
    return len(b) - len(os.path.commonprefix([a, b]))


def render(messages: list[dict[str, str]]) -> str:
    return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)


def test_a_shortened_history_drops_old_stages_in_blocks_so_the_prefix_survives_most_decisions(load_benchmark):
    """Past the context, dropping one stage per decision would rewrite the paper prompt right after S0
    at every decision (everything evaluated again); dropping a block of stages at a time rewrites it
    once per block, and still shows at least half of the stages that would fit."""
    contexts = load_benchmark("bench_prompt_cache").synthetic_contexts(stages=60, seed=0)
    context_size = estimate_tokens(build_messages(contexts[29], needs_text="Lower NIQE."))  # 30 stages fit

    def fitted(ctx: Any) -> list[dict[str, str]]:
        return fit_history(ctx, needs_text="Lower NIQE.", context_size=context_size, reserve=0)[0]

    prompts = [fitted(ctx) for ctx in contexts]
    assert all(estimate_tokens(m) <= context_size for m in prompts)
    rewritten = 0
    for k in range(30, 60):  # the decisions past the context
        user = prompts[k][1]["content"]
        assert "Initial state S0" in user and f"Stage {k + 1} (ended" in user
        assert "left out to fit the model's context window; S0 and the stages after them are shown" in user
        shown = user.count("  weights used:")
        wider = build_messages(contexts[k], needs_text="Lower NIQE.", history_window=2 * shown + 1)
        assert estimate_tokens(wider) > context_size  # at least half of the stages that would fit are shown
        if tail(prompts[k - 1], prompts[k]) > 0.5 * len(render(prompts[k])):
            rewritten += 1  # everything after S0 differs from the previous prompt: evaluated again
    assert 1 <= rewritten <= 5, rewritten  # blocks of 8 stages (30 fit), not one stage at each of 30 decisions


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppBackend]:
    """The embedded SmolLM2-135M through llama.cpp (skipped where llama-cpp-python or the model is missing)."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    try:
        backend = create_backend({"type": "llama_cpp", "n_ctx": 4096, "n_threads": 1})
    except al.BackendError as err:
        pytest.skip(f"no embedded model: {err}")
    assert isinstance(backend, LlamaCppBackend)
    yield backend
    backend.close()


def growth(layout: list[list[dict[str, str]]], tokens: Any = None) -> tuple[dict[int, int], float, float]:
    """The tail at each decision of ``AT``, how much it grows per stage, and how much the prompt does."""
    size = (lambda m: len(tokens(m))) if tokens is not None else (lambda m: len(render(m)))
    t = {k: tail(layout[k - 2], layout[k - 1], tokens) for k in AT}
    first, last = AT[0], AT[-1]
    per_stage = (t[last] - t[first]) / (last - first)
    prompt_per_stage = (size(layout[last - 1]) - size(layout[first - 1])) / (last - first)
    return t, per_stage, prompt_per_stage


@pytest.mark.parametrize("layout", ["guided", "paper"])
def test_each_prompt_extends_the_previous_one_and_the_new_tail_does_not_grow(prompts, layout):
    """Characters: every decision's system message is the previous one's, the previous history is
    in the shared prefix, and the part after it stays the same size from 1 to 19 stages of history."""
    msgs = prompts[layout]
    assert all(m[0] == msgs[0][0] for m in msgs)  # the system message never changes
    marker = "has ended" if layout == "guided" else "has just ended"
    for k in AT:
        prev, cur = msgs[k - 2][1]["content"], msgs[k - 1][1]["content"]
        history = prev[: prev.index(f"Stage {k - 1} of {STAGES + 1} {marker}")]
        assert cur.startswith(history) and f"{k - 1}" in history  # stage k-1's lines, unchanged
    t, per_stage, prompt_per_stage = growth(msgs)
    assert prompt_per_stage > 40  # the history grows by a line (guided) or a block (paper) a stage ...
    assert per_stage < 0.1 * prompt_per_stage  # ... the evaluated tail does not
    assert t[STAGES] < 0.5 * len(render(msgs[-1]))


def test_the_tail_in_smollm2_tokens_is_constant_and_was_not_before_the_reorder(prompts, smollm2):
    """Tokens, by llama-cpp-python's own prefix rule on SmolLM2's chat template: what decision k evaluates
    after decision k-1 at 1, 9 and 19 stages of history. The order the guided prompt had before (the
    stage and the guards' current values above the history) re-evaluates the whole history every time."""
    ids = smollm2.prompt_token_ids
    assert ids(prompts["guided"][0]) is not None  # exact: the GGUF's own template
    for layout in ("guided", "paper"):
        t, per_stage, prompt_per_stage = growth(prompts[layout], ids)
        assert prompt_per_stage > 20 and per_stage < 0.1 * prompt_per_stage, (layout, t)
        assert t[STAGES] < 0.4 * len(ids(prompts[layout][-1])), (layout, t)
    before, before_per_stage, prompt_per_stage = growth(prompts["before"], ids)
    after, _, _ = growth(prompts["guided"], ids)
    assert before_per_stage > 0.8 * prompt_per_stage  # the whole history again, every decision
    assert before[STAGES] > 2 * after[STAGES]


@pytest.mark.slow
def test_llama_cpp_records_the_prompt_tokens_each_decision_evaluated(smollm2, tmp_path):
    """Two decisions of a real run asked of the embedded SmolLM2: the second call reuses from the KV
    cache the system part and the whole history of the first, evaluates only the rest, and the run's
    stages.jsonl records both numbers per call."""
    agent = al.GuidedAgent(backend=smollm2, needs="Lower noise.", max_tokens=8)
    tiny_run(agent, 2, run_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "stages.jsonl").read_text().splitlines()]
    asked = [r["decision"]["exchange"] for r in records if r.get("decision") and r["decision"]["exchange"]]
    assert len(asked) == 2, records
    prompts = [[{"role": m["role"], "content": m["content"]} for m in ex[:2]] for ex in asked]
    first, second = (ex[2] for ex in asked)  # the answers, with the call's numbers
    for call in (first, second):
        assert call["role"] == "assistant" and call["prompt_eval_tokens"] + call["cached_prompt_tokens"] == \
            call["prompt_tokens"] > 400
        assert call["perf_prompt_eval_tokens"] == call["prompt_eval_tokens"]  # llama.cpp's own counter agrees
    assert first["cached_prompt_tokens"] == 0  # nothing in the context before the first call
    ids = [smollm2.prompt_token_ids(p) for p in prompts]
    # what the second call reused is exactly what its prompt shares with the first ...
    assert second["cached_prompt_tokens"] == LlamaCppBackend.cached_prefix(ids[0], ids[1])
    # ... which is the system part, the goal and guards, and all of the first prompt's history
    text = prompts[0][1]["content"]
    history = prompts[0][:1] + [{"role": "user", "content": text[: text.index("Stage 1 of 3 has ended")]}]
    assert second["cached_prompt_tokens"] >= len(smollm2.prompt_token_ids(history)) - 8  # less the closing tokens
    assert second["prompt_eval_tokens"] < 0.7 * second["prompt_tokens"]


def test_the_reused_prefix_follows_llama_cpp_python(smollm2):
    """The same prompt again evaluates one token (its last, for the logits); a longer conversation
    only what follows the previous prompt and answer; a prompt changed at its start everything."""
    msgs = [{"role": "system", "content": "You choose."}, {"role": "user", "content": "Option A or B? " * 4}]
    first = smollm2.chat(msgs, max_tokens=3)
    again = smollm2.chat(msgs, max_tokens=3)
    assert again.prompt_eval_tokens == 1 and again.cached_prompt_tokens == again.prompt_tokens - 1
    longer = smollm2.chat([*msgs, {"role": "assistant", "content": again.text}, {"role": "user", "content": "Why?"}],
                          max_tokens=3)
    assert 0 < longer.prompt_eval_tokens < longer.prompt_tokens - first.prompt_tokens + 8
    changed = smollm2.chat([{"role": "system", "content": "We choose."}, msgs[1]], max_tokens=3)
    assert changed.prompt_eval_tokens >= changed.prompt_tokens - 3  # only <|im_start|>system is shared


def test_ask_records_the_backends_counts_and_its_info_only_fills_gaps():
    class Counted:
        supports_grammar = False

        def chat(self, messages, **kw):  # type: ignore[no-untyped-def]
            return ChatResult("ok", "stop", prompt_tokens=700, completion_tokens=2, prompt_eval_tokens=90,
                              cached_prompt_tokens=610, info={"prompt_eval_tokens": 1, "eval_ms": 3.5})

    out = ask(Counted(), [{"role": "user", "content": "?"}], lambda r: r.text, correction=str)
    call = out.exchange[-1]
    assert (call["prompt_tokens"], call["prompt_eval_tokens"], call["cached_prompt_tokens"], call["eval_ms"]) == \
        (700, 90, 610, 3.5)


class _Usage(http.server.BaseHTTPRequestHandler):
    """Answers a chat completion with the usage/timings shape named by the request's model."""

    shapes: ClassVar[dict[str, dict[str, Any]]] = {
        "openai": {"usage": {"prompt_tokens": 1500, "completion_tokens": 9,
                             "prompt_tokens_details": {"cached_tokens": 1280}}},
        "llama-server": {"usage": {"prompt_tokens": 700, "completion_tokens": 9},
                         "timings": {"cache_n": 610, "prompt_n": 90, "prompt_ms": 80.0}},
        "plain": {"usage": {"prompt_tokens": 700, "completion_tokens": 9}},
    }

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Choice: A"},
                                        "finish_reason": "stop"}], **self.shapes[body["model"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_compatible_servers_report_cached_prompt_tokens_where_they_can():
    pytest.importorskip("openai", reason="the openai backend needs the openai package")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Usage)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        got = {}
        for model in _Usage.shapes:
            r = create_backend({"type": "openai", "model": model, "base_url": url, "max_retries": 0}).chat(
                [{"role": "user", "content": "A or B?"}], max_tokens=4)
            got[model] = (r.prompt_tokens, r.prompt_eval_tokens, r.cached_prompt_tokens)
    finally:
        server.shutdown()
        server.server_close()
    # OpenAI/vLLM: usage.prompt_tokens_details; llama.cpp's server: timings; otherwise unknown, not 0.
    assert got == {"openai": (1500, 220, 1280), "llama-server": (700, 90, 610), "plain": (700, None, None)}


@pytest.mark.slow
def test_transformers_evaluates_the_whole_prompt_every_call(tmp_path):
    pytest.importorskip("transformers", reason="the transformers backend needs transformers")
    from tests.tiny_models import build_tiny_llama

    backend = create_backend({"type": "transformers", "model": str(build_tiny_llama(tmp_path)), "device": "cpu"})
    msgs = [{"role": "user", "content": "Option A or B?"}]
    for _ in range(2):  # no cache is kept between calls: the second evaluates everything again
        r = backend.chat(msgs, max_tokens=3)
        assert r.prompt_eval_tokens == r.prompt_tokens == backend.count_tokens(msgs) and r.cached_prompt_tokens == 0
