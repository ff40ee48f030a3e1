"""The openai backend, and the LLM agent on top of it, against a server that misbehaves in every way we know.

Every case must end within the backend's deadline (plus a small margin for a busy machine): the
backend returns or raises ``BackendError``, and the agent records a fallback with the current
weights. Where a request is cut off, the server must also see the connection closed soon after,
so a late request does not keep its socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from agentloss.agents.llm import LLMAgent
from agentloss.backends import BackendError, OpenAIBackend, create_backend
from agentloss.prompts import sample_context
from tests.faults.fault_server import FaultServer

pytest.importorskip("openai", reason="the openai backend needs the openai package")

TIMEOUT, DEADLINE = 0.6, 1.5  # one attempt, the whole call (seconds)
MARGIN = 0.5  # thread start-up and a busy shared machine
MESSAGES = [{"role": "user", "content": "Weights?"}]

# mode -> (what the backend's error says, or None when it answers; whether the deadline ends it)
CASES = {
    "refuse": ("connection failed.*after 3 attempts", False),
    "500": ("HTTP 500 from server: boom after 3 attempts", False),
    "429": ("HTTP 429 from server: slow down after 3 attempts", False),
    "malformed": ("not valid JSON", False),
    "huge": ("larger than 4 MiB", False),
    "trickle": ("deadline of 1.5 s", True),
    "chunked": ("deadline of 1.5 s", True),
    "slow_headers": ("deadline of 1.5 s", True),
    "silent": ("deadline of 1.5 s", True),
    "long_answer": (None, False),
}


@pytest.fixture
def serve() -> Iterator[Callable[[str], FaultServer]]:
    servers: list[FaultServer] = []

    def start(mode: str) -> FaultServer:
        servers.append(FaultServer(mode))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def backend_for(server: FaultServer, **fields) -> OpenAIBackend:
    config = {"type": "openai", "model": "fault", "base_url": server.base_url, "api_key": "sk-fault",
              "timeout": TIMEOUT, "deadline": DEADLINE, "max_retries": 2, "backoff": 0.05, **fields}
    backend = create_backend(config)
    assert isinstance(backend, OpenAIBackend)
    backend._get_client()  # import openai and build the client outside the timed part
    return backend


@pytest.mark.parametrize("mode", list(CASES))
def test_backend_ends_within_its_deadline(serve, mode):
    server = serve(mode)
    backend = backend_for(server)
    message, cut_by_deadline = CASES[mode]
    start = time.monotonic()
    if message is None:
        result = backend.chat(MESSAGES)
        assert len(result.text) > 100_000  # a huge but well-formed answer comes back
    else:
        with pytest.raises(BackendError, match=message):
            backend.chat(MESSAGES)
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE + MARGIN, f"{mode}: {elapsed:.2f} s"
    if cut_by_deadline:
        assert elapsed > DEADLINE - 0.1, f"{mode}: ended at {elapsed:.2f} s, before its deadline"
        assert server.requests >= 2  # a timed-out attempt is retried while time is left
        assert server.wait_all_gone(timeout=1.5), f"{mode}: a late request's connection was left open"
    print(f"\n{mode}: {elapsed:.2f} s, {server.requests} request(s)")


@pytest.mark.parametrize("mode", list(CASES))
def test_agent_records_a_fallback_within_the_deadline(serve, mode):
    server = serve(mode)
    ctx = sample_context()
    agent = LLMAgent(backend_for(server), max_tries=2)
    start = time.monotonic()
    decision = agent.propose(ctx)
    elapsed = time.monotonic() - start
    message, _ = CASES[mode]
    # A backend error ends the asking at once (one call); an unreadable answer is asked again.
    calls = 1 if message is not None else 2
    assert elapsed < calls * DEADLINE + MARGIN, f"{mode}: {elapsed:.2f} s"
    assert decision.fallback, f"{mode}: no fallback recorded"
    assert decision.weights == dict(ctx.current_weights)
    if message is not None:
        assert decision.fallback.startswith("backend error: BackendError")
    else:
        assert "characters long and was not read" in decision.fallback
        assert server.requests == 2
    assert agent.fallbacks == 1


def test_a_stalled_attempt_is_abandoned_and_the_retry_answers(serve):
    server = serve("stall_once")
    backend = backend_for(server)
    start = time.monotonic()
    result = backend.chat(MESSAGES)
    elapsed = time.monotonic() - start
    assert result.text.startswith("Weights:") and result.info["attempts"] == 2
    assert TIMEOUT - 0.05 < elapsed < TIMEOUT + MARGIN
    assert server.wait_all_gone(timeout=1.5)


def test_the_deadline_cuts_an_attempt_shorter_than_its_timeout(serve):
    server = serve("trickle")
    backend = backend_for(server, timeout=30.0, deadline=1.0)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within the deadline of 1 s \(1 attempt; last: no answer yet\)"):
        backend.chat(MESSAGES)
    assert time.monotonic() - start < 1.0 + MARGIN
    assert server.requests == 1
