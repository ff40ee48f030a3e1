"""The stall of a stage end: synchronous against asynchronous decisions, with Fixed as the baseline.

At a stage end the training loop stands still while the probe is restored and scored; a synchronous
decision also waits there for the agent, an asynchronous one (``StageScheduler(asynchronous=True,
apply_at="asap")``) asks the agent in a background thread and goes on training. This script runs the
same small training (``SmallSR`` x2 on scikit-image patches, PIQE + PSNR on six probe crops, CPU)
with the paper's LLM agent behind two OpenAI-compatible endpoints on 127.0.0.1:

* a stub (an ``http.server`` thread in this process) that answers a valid ``Weights:`` line after a
  fixed delay (``--delays``, default 1, 10 and 60 s);
* a real ``python -m llama_cpp.server`` subprocess serving the embedded SmolLM2-135M GGUF (found as
  ``agentloss.backends.defaults.find_default_gguf`` finds it; ``--gguf`` for another file), with
  its grammar, stopped at the end;

each synchronously and asynchronously, after one Fixed run (no agent cost), all with the same seed.
The iteration time is measured first, and a stage is made ``--stage-margin`` times longer than the
largest delay, so that an asynchronous answer arrives before the next stage end.

Per stage end it reports ``timings["stall_s"]`` (the time the training loop stood still) split into
probe scoring (``restore_s + score_s``), trials (none here: ``trial_s``), waiting for the agent
(synchronous: ``agent_s``; asynchronous: ``wait_s``) and the rest (building the decision context,
starting the request); per run the wall time against Fixed's. Two targets are checked, for the
asynchronous runs:

1. the stall is at most the probe-scoring time + 5 % of it, at every stage end, for every endpoint
   that answers within a stage;
2. the projected overhead at the paper's stage length is at most 2 %: (the stall of a stage end
   that asks + the wait for its answer at the next stage end) / (5000 x Fixed's iteration time).

Output: progress lines, two markdown tables (per stage end, per run) with the targets' PASS/FAIL,
and ``--out`` (default ``benchmarks/results/stall/``): ``stall.md`` and ``stall.json`` (every number,
the settings, the machine's load average; ``stall_quick.*`` with ``--quick``).

Commands::

    python benchmarks/bench_stall.py                 # delays 1, 10, 60 s + SmolLM2
    python benchmarks/bench_stall.py --quick         # delays 1 and 3 s, short stages
    python benchmarks/bench_stall.py --delays 5 30 --no-llama

Time: 9 runs of 2 stages of 1.25 x 60 s plus the synchronous decisions, about 25 min on an idle
machine; 27.8 min measured on the shared 2-core machine while its load average rose from 9 to 18.
``--quick``: 2.6 min.

The functions are importable for tests (``tests/test_bench_stall.py``):

>>> with StubEndpoint(format_answer({"l1": 1.0, "ssim": 0.3}), delay=0.0) as stub:
...     stub.base_url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import torch

import agentloss as al
from agentloss.backbones import create_backbone
from agentloss.data import PROBE_PHOTOS, PatchPairStream, bicubic_downsample, builtin_photos
from agentloss.proposal import format_weights

SCALE = 2
WEIGHTS = {"l1": 1.0, "ssim": 0.2, "fft": 0.05}  # terms that need no downloaded weights
# What the stub answers: a valid move from WEIGHTS (within the default x4 move limit), so that the
# asynchronous answer really changes the weights during training.
STUB_WEIGHTS = {"l1": 1.0, "ssim": 0.3, "fft": 0.1}
NEEDS = "Lower PIQE while losing at most 0.2 dB PSNR."
PAPER_STAGE = 5000  # the paper's stage length, in iterations
STALL_SLACK = 0.05  # target 1: stall <= probe scoring x (1 + 5 %)
OVERHEAD_TARGET = 0.02  # target 2: projected overhead <= 2 %
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stall"


# ------------------------------------------------------------------------------------------------
# The stub endpoint


def format_answer(weights: Mapping[str, float], thoughts: str = "a stub answer after a fixed delay") -> str:
    """The LLM agent's two-line answer format (``Weights: a:b=1:0.3`` then ``Thoughts: ...``)."""
    return f"Weights: {format_weights(dict(weights))}\nThoughts: {thoughts}"


class StubEndpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers ``answer`` after ``delay`` seconds.

    ``GET /v1/models`` lists one model; ``POST /v1/chat/completions`` reads the request, waits
    ``delay`` seconds (cut short by ``close()``) and answers a chat completion holding ``answer``.
    Each request is served by its own thread; ``requests`` counts them.
    """

    def __init__(self, answer: str, delay: float, model: str = "stub") -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay}")
        self.answer, self.delay, self.model = answer, float(delay), model
        self.requests = 0
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
        self._server.daemon_threads = True  # a request still sleeping never keeps the process alive
        self._server.stub = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"stub-endpoint-{self.port}", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    def close(self) -> None:
        self.closed.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects; every answer has a length

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the progress lines

    def _send(self, status: int, payload: Mapping[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        stub: StubEndpoint = self.server.stub  # type: ignore[attr-defined]
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model", "owned_by": "stub"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        stub: StubEndpoint = self.server.stub  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        stub.count()
        if stub.closed.wait(stub.delay):  # closed while waiting: answer at once, the run is over
            self._send(503, {"error": {"message": "stub endpoint closed"}})
            return
        self._send(200, {
            "id": f"chatcmpl-stub-{stub.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": stub.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": stub.answer},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


# ------------------------------------------------------------------------------------------------
# The llama.cpp server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 serving one GGUF; ``start()`` waits until it answers."""

    def __init__(self, gguf: str | os.PathLike[str], *, threads: int = 1, n_ctx: int = 4096, alias: str = "smollm2",
                 log_dir: str | os.PathLike[str] | None = None) -> None:
        self.gguf, self.threads, self.n_ctx, self.alias = Path(gguf), threads, n_ctx, alias
        self.port = free_port()
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="bench-stall-")) / "llama_server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300.0) -> float:
        """Start the server and wait for ``/v1/models``; returns the seconds it took to answer."""
        if not self.gguf.is_file():
            raise FileNotFoundError(f"GGUF model {self.gguf} not found; pass --gguf PATH or --no-llama")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", self.alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with code {self.proc.returncode} before answering; "
                                   f"its log ({self.log_path}) ends with:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"llama_cpp.server did not answer /v1/models within {timeout:g} s; log:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# The training run


@dataclass
class Setup:
    """The training run every method shares (the same seed gives the same model, batches and probe)."""

    width: int = 32
    depth: int = 4
    patch: int = 48
    batch: int = 8
    lr: float = 2e-4
    probe_crop: int = 240  # HR px; a 2x3 grid of crops of the right motorcycle view, as bench_quality's probe
    probe_grid: tuple[int, int] = (2, 3)
    objectives: tuple[str, ...] = ("piqe", "psnr")
    seed: int = 0
    threads: int = 1


@dataclass
class Probe:
    lq: list[torch.Tensor]
    hr: list[torch.Tensor]


def make_probe(setup: Setup) -> Probe:
    """Crops on a grid of the photo neither trained on nor evaluated (``PROBE_PHOTOS``), LQ by bicubic x2."""
    photo = builtin_photos(PROBE_PHOTOS)[0]
    rows, cols = setup.probe_grid
    c = setup.probe_crop - setup.probe_crop % SCALE
    _, h, w = photo.shape
    if rows * c > h or cols * c > w:
        raise ValueError(f"a {rows}x{cols} grid of {c} px crops does not fit the {h}x{w} probe photo")
    hr = [photo[:, i * c:(i + 1) * c, j * c:(j + 1) * c].contiguous() for i in range(rows) for j in range(cols)]
    return Probe([bicubic_downsample(x.unsqueeze(0), SCALE)[0] for x in hr], hr)


def make_objectives(names: Sequence[str]) -> list[al.Objective]:
    """Built once and shared by every run (building a pyiqa metric costs seconds, scoring does not)."""
    out: list[al.Objective] = []
    for name in names:
        out.append(al.PSNRObjective(device="cpu") if name == "psnr" else al.PyiqaObjective(name, device="cpu"))
    return out


@dataclass
class Trainer:
    model: torch.nn.Module
    loss_fn: al.AgentWeightedLoss
    opt: torch.optim.Optimizer
    stream: PatchPairStream

    def step(self) -> None:
        lq, hr = next(self.stream)
        loss = self.loss_fn(self.model(lq), hr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def make_trainer(setup: Setup) -> Trainer:
    # Set here, not only in main: on a loaded 2-core machine two threads make a tiny net's step ~100x
    # slower (each parallel region waits for a descheduled thread), which would swamp every stall.
    torch.set_num_threads(setup.threads)
    torch.manual_seed(setup.seed)
    model = create_backbone("small_sr", SCALE, width=setup.width, depth=setup.depth)
    loss_fn = al.AgentWeightedLoss(dict(WEIGHTS))
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    return Trainer(model, loss_fn, opt, PatchPairStream(_training_photos(), SCALE, setup.patch, setup.batch,
                                                        seed=setup.seed))


@functools.lru_cache(maxsize=1)
def _training_photos() -> tuple[torch.Tensor, ...]:
    """Loaded once: decoding scikit-image's photos takes seconds (read-only afterwards)."""
    return tuple(builtin_photos())


def measure_iteration(setup: Setup, steps: int = 30, warmup: int = 5) -> float:
    """Median seconds of one training step (forward, loss, backward, Adam), after ``warmup`` steps."""
    trainer = make_trainer(setup)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        trainer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def stage_length_for(longest_delay: float, iteration_s: float, margin: float, minimum: int = 2) -> int:
    """Iterations a stage needs to last ``margin`` times ``longest_delay`` at ``iteration_s`` a step.

    >>> stage_length_for(60, 0.1, 1.25)
    750
    """
    return max(minimum, math.ceil(margin * longest_delay / iteration_s))


@dataclass
class RunSpec:
    """One run: which endpoint (``none`` for Fixed), its delay (the stub's), and the mode."""

    endpoint: str  # "none" | "stub" | "llama"
    mode: str  # "fixed" | "sync" | "async"
    delay: float | None = None

    @property
    def label(self) -> str:
        if self.endpoint == "none":
            return "Fixed"
        what = f"stub {self.delay:g}s" if self.endpoint == "stub" else "llama.cpp SmolLM2"
        return f"{what} {self.mode}"


def llm_agent(base_url: str, model: str, *, timeout: float, grammar: bool) -> al.Agent:
    """The paper's LLM agent behind an OpenAI-compatible endpoint (the factory path a config takes)."""
    return al.create_agent({"type": "llm", "needs": NEEDS, "seed": 0, "backend": {
        "type": "openai", "base_url": base_url, "model": model, "timeout": timeout, "deadline": 2 * timeout,
        "max_retries": 1, "grammar_mode": "llama_cpp" if grammar else "none"}})


def stage_end_row(record: Any, asynchronous: bool, next_record: Any | None) -> dict[str, Any]:
    """One stage end's stall split into its parts (seconds)."""
    t = record.timings
    probe = t.get("restore_s", 0.0) + t.get("score_s", 0.0)
    trial = t.get("trial_s", 0.0)
    asked = record.decision is not None and record.decision.skipped is None
    # Synchronous: the agent ran inside the stall. Asynchronous: only a wait for the previous answer did.
    agent_wait = t.get("wait_s", 0.0) if asynchronous else (t.get("agent_s", 0.0) if asked else 0.0)
    stall = t["stall_s"]
    # Steady state of a long asynchronous run: every stage end asks, and the next one may wait for it.
    answer_wait = (next_record.timings.get("wait_s", 0.0) if asynchronous and next_record is not None else 0.0)
    return {
        "stage": record.stage, "iteration": record.iteration, "applied_iteration": record.applied_iteration,
        "asked": asked, "stall_s": stall, "probe_s": probe, "restore_s": t.get("restore_s", 0.0),
        "score_s": t.get("score_s", 0.0), "trial_s": trial, "agent_wait_s": agent_wait,
        "other_s": stall - probe - trial - agent_wait, "agent_s": t.get("agent_s"), "train_s": t.get("train_s"),
        "answer_wait_next_s": answer_wait, "fallback": record.fallback,
        "weights": record.weights, "next_weights": record.next_weights,
    }


def run_one(spec: RunSpec, setup: Setup, probe: Probe, objectives: Sequence[al.Objective], agent: al.Agent, *,
            stage_length: int, stages: int, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``stages`` stages of ``stage_length`` steps with ``agent``; the stall of every stage end.

    S0 is scored before the clock starts (it is the same in every run); the wall time covers every
    training step and stage end, and ``close()``."""
    trainer = make_trainer(setup)
    asynchronous = spec.mode == "async"
    sched = al.StageScheduler(trainer.loss_fn, agent, objectives, trainer.model, probe.lq,
                              probe_references=probe.hr, stage_length=stage_length, total_stages=stages,
                              asynchronous=asynchronous, apply_at="asap")
    sched.start()
    t0 = time.perf_counter()
    for _ in range(stage_length * stages):
        trainer.step()
        record = sched.step()
        if record is not None:
            t = record.timings
            wait = t.get("wait_s", 0.0) if asynchronous else t.get("agent_s", 0.0)
            progress(f"  {spec.label}: stage {record.stage} ended at iteration {record.iteration} "
                     f"({t['train_s']:.1f} s training): stalled {t['stall_s']:.3f} s (probe "
                     f"{t['restore_s'] + t['score_s']:.3f} s, agent {wait:.3f} s)")
    sched.close()
    wall = time.perf_counter() - t0
    records = sched.history[1:]
    rows = [stage_end_row(r, asynchronous, records[i + 1] if i + 1 < len(records) else None)
            for i, r in enumerate(records)]
    train = sum(r["train_s"] for r in rows)
    return {"label": spec.label, **asdict(spec), "wall_s": wall, "train_s": train,
            "iteration_s": train / (stage_length * stages), "stage_ends": rows,
            "fallbacks": [r["fallback"] for r in rows if r["fallback"]]}


# ------------------------------------------------------------------------------------------------
# Summary and targets


def summarize(run: dict[str, Any], fixed: dict[str, Any], stage_length: int) -> dict[str, Any]:
    """Per-run numbers, the projection to the paper's stage length and the targets (asynchronous runs)."""
    ends = run["stage_ends"]
    asking = [e for e in ends if e["asked"]] or ends  # Fixed asks an agent too, just a free one
    fixed_iter = fixed["iteration_s"]
    # A long run's every stage end asks; its stall is this one's plus, asynchronously, the wait for
    # its answer at the next stage end.
    per_end = statistics.mean(e["stall_s"] + e["answer_wait_next_s"] for e in asking)
    fixed_per_end = statistics.mean(e["stall_s"] for e in fixed["stage_ends"] if e["asked"])
    paper_s = PAPER_STAGE * fixed_iter
    agent_s = [e["agent_s"] for e in ends if e["agent_s"] is not None and e["asked"]]
    out: dict[str, Any] = {
        "label": run["label"], "endpoint": run["endpoint"], "mode": run["mode"], "delay": run["delay"],
        "stage_ends": len(ends), "stall_mean_s": statistics.mean(e["stall_s"] for e in ends),
        "stall_max_s": max(e["stall_s"] for e in ends), "probe_mean_s": statistics.mean(e["probe_s"] for e in ends),
        "trial_mean_s": statistics.mean(e["trial_s"] for e in ends),
        "agent_wait_mean_s": statistics.mean(e["agent_wait_s"] for e in ends),
        "other_mean_s": statistics.mean(e["other_s"] for e in ends),
        "agent_s": statistics.mean(agent_s) if agent_s else None,
        "wall_s": run["wall_s"], "wall_ratio": run["wall_s"] / fixed["wall_s"],
        "iteration_s": run["iteration_s"], "stall_per_asking_end_s": per_end,
        "projected_overhead": per_end / paper_s, "projected_agent_overhead": (per_end - fixed_per_end) / paper_s,
        "fallbacks": len(run["fallbacks"]),
    }
    if run["mode"] == "async":
        # Target 1 is for agents that answer within a stage: a later answer is waited for at the next
        # stage end, by design. Whether it came in time is read from the run (an answer applied before
        # the next stage end), not from the nominal delay: the iteration time drifts on a shared machine.
        in_time = [e["applied_iteration"] is not None and e["applied_iteration"] < e["iteration"] + stage_length
                   for e in asking]
        worst = max(e["stall_s"] / e["probe_s"] - 1 for e in ends)
        out["answers_within_stage"] = all(in_time) and not run["fallbacks"]
        out["stall_excess_max"] = worst
        out["target_stall"] = ("n/a" if not out["answers_within_stage"] else "PASS" if worst <= STALL_SLACK
                               else "FAIL")
        out["target_overhead"] = "PASS" if out["projected_overhead"] <= OVERHEAD_TARGET else "FAIL"
    return out


def markdown_tables(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [(f"Stage: {s['stage_length']} iterations x {s['stages']} stages ({s['stage_s']:.1f} s at Fixed's "
             f"{s['fixed_iteration_s'] * 1e3:.1f} ms an iteration); seconds per stage end."), "",
             "| run | stage | stall | probe scoring | trials | agent wait | other | agent (s) | applied at iter |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in results["runs"]:
        for e in run["stage_ends"]:
            agent = "—" if e["agent_s"] is None else f"{e['agent_s']:.2f}"
            applied = "—" if e["applied_iteration"] is None else str(e["applied_iteration"])
            lines.append(f"| {run['label']} | {e['stage']} | {e['stall_s']:.3f} | {e['probe_s']:.3f} | "
                         f"{e['trial_s']:.3f} | {e['agent_wait_s']:.3f} | {e['other_s']:.4f} | {agent} | {applied} |")
    lines += ["", (f"Per run: wall time against Fixed's; projected overhead at {PAPER_STAGE} iterations a stage = "
              f"(stall of a stage end that asks + the wait for its answer at the next) / ({PAPER_STAGE} x "
              f"{s['fixed_iteration_s'] * 1e3:.1f} ms); targets for the asynchronous runs: stall <= probe scoring "
              f"+ {STALL_SLACK:.0%} at every stage end, projected overhead <= {OVERHEAD_TARGET:.0%}."), "",
              ("| run | wall s | wall / Fixed | ms/iter | stall per asking end s | projected overhead "
              "(agent only) | stall - probe, worst | target stall | target overhead |"),
              "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results["summary"]:
        excess = f"{r['stall_excess_max']:+.1%}" if "stall_excess_max" in r else "—"
        lines.append(f"| {r['label']} | {r['wall_s']:.1f} | {r['wall_ratio']:.3f} | {r['iteration_s'] * 1e3:.1f} | "
                     f"{r['stall_per_asking_end_s']:.3f} | {r['projected_overhead']:.3%} "
                     f"({r['projected_agent_overhead']:+.3%}) | {excess} | {r.get('target_stall', '—')} | "
                     f"{r.get('target_overhead', '—')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delays", type=float, nargs="+", default=None,
                    help="the stub's answer delays in seconds (default 1 10 60; --quick: 1 3)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: delays 1 and 3 s, so short stages")
    ap.add_argument("--stages", type=int, default=2, help="stages per run (>= 2: the last stage end asks nothing)")
    ap.add_argument("--stage-margin", type=float, default=None,
                    help="a stage lasts this many times the largest delay, at the measured iteration time "
                         "(default 1.25; --quick: 2, as a few seconds' stage drifts more)")
    ap.add_argument("--stage-length", type=int, default=None, help="iterations per stage (default: derived)")
    ap.add_argument("--no-llama", action="store_true", help="skip the llama_cpp.server endpoint")
    ap.add_argument("--gguf", default=None, help="GGUF for llama_cpp.server (default: the embedded SmolLM2)")
    ap.add_argument("--llama-threads", type=int, default=1, help="llama.cpp threads (1 on a shared 2-core machine)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for stall.md and stall.json")
    args = ap.parse_args(argv)
    if args.delays is None:
        args.delays = [1.0, 3.0] if args.quick else [1.0, 10.0, 60.0]
    if any(d < 0 for d in args.delays):
        ap.error("--delays must be >= 0 seconds")
    if args.stages < 2:
        ap.error("--stages must be >= 2: the last stage end asks no agent, so one stage measures no decision")
    if args.stage_margin is None:
        args.stage_margin = 2.0 if args.quick else 1.25
    if args.stage_margin <= 1:
        ap.error("--stage-margin must be > 1: a stage must outlast the largest delay")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    setup = Setup(threads=args.threads)
    gguf = None
    if not args.no_llama:
        from agentloss.backends.defaults import find_default_gguf

        gguf = Path(args.gguf) if args.gguf else find_default_gguf()  # fails now, before anything is measured
        if not gguf.is_file():
            raise SystemExit(f"--gguf {gguf} is not a file")
    import openai  # noqa: F401 - imported once here, not inside the first timed decision

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    progress(f"load average {load_before[0]:.1f} on {os.cpu_count()} cores; building the probe and objectives")
    probe = make_probe(setup)
    objectives = make_objectives(setup.objectives)
    iteration_s = measure_iteration(setup)
    longest = max(args.delays)
    stage_length = args.stage_length or stage_length_for(longest, iteration_s, args.stage_margin)
    stage_s = stage_length * iteration_s
    runs_planned = 1 + 2 * len(args.delays) + (0 if args.no_llama else 2)
    eta = runs_planned * args.stages * stage_s + sum(args.delays) * (args.stages - 1)
    progress(f"iteration {iteration_s * 1e3:.1f} ms -> {stage_length} iterations a stage ({stage_s:.1f} s > "
             f"{longest:g} s delay); {runs_planned} runs x {args.stages} stages: about {eta / 60:.1f} min of training")

    runs: list[dict[str, Any]] = []

    def go(spec: RunSpec, agent: al.Agent) -> None:
        progress(f"run {len(runs) + 1}/{runs_planned}: {spec.label}")
        runs.append(run_one(spec, setup, probe, objectives, agent, stage_length=stage_length, stages=args.stages,
                            progress=progress))
        progress(f"  {spec.label}: {runs[-1]['wall_s']:.1f} s wall")

    go(RunSpec("none", "fixed"), al.FixedAgent())
    answer = format_answer(STUB_WEIGHTS)
    for delay in args.delays:
        with StubEndpoint(answer, delay) as stub:
            for mode in ("sync", "async"):
                go(RunSpec("stub", mode, delay), llm_agent(stub.base_url, stub.model, timeout=delay + 60, grammar=False))
    llama_info: dict[str, Any] | None = None
    if gguf is not None:
        server = LlamaServer(gguf, threads=args.llama_threads)
        progress(f"starting llama_cpp.server on {server.base_url} with {gguf.name}")
        try:
            ready = server.start()
            progress(f"  it answered /v1/models after {ready:.1f} s")
            llama_info = {"gguf": str(gguf), "threads": args.llama_threads, "n_ctx": server.n_ctx, "ready_s": ready}
            for mode in ("sync", "async"):
                go(RunSpec("llama", mode), llm_agent(server.base_url, server.alias, timeout=300, grammar=True))
        finally:
            server.stop()

    fixed = runs[0]
    summary = [summarize(r, fixed, stage_length) for r in runs]
    total = time.perf_counter() - started
    results = {
        "settings": {"argv": list(sys.argv[1:] if argv is None else argv), "setup": asdict(setup),
                     "delays": args.delays, "stages": args.stages, "stage_length": stage_length,
                     "stage_margin": args.stage_margin, "measured_iteration_s": iteration_s,
                     "fixed_iteration_s": fixed["iteration_s"], "stage_s": stage_length * fixed["iteration_s"],
                     "weights": WEIGHTS, "stub_weights": STUB_WEIGHTS, "llama": llama_info,
                     "apply_at": "asap", "paper_stage": PAPER_STAGE, "stall_slack": STALL_SLACK,
                     "overhead_target": OVERHEAD_TARGET},
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "load_before": load_before,
                    "load_after": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "runs": runs, "summary": summary, "total_s": total,
    }
    table = markdown_tables(results)
    print()
    print(table)
    asynchronous = [r for r in summary if r["mode"] == "async"]
    for r in asynchronous:
        print(f"{r['label']}: stall <= probe scoring + {STALL_SLACK:.0%}: {r['target_stall']} "
              f"(worst {r['stall_excess_max']:+.1%}); projected overhead {r['projected_overhead']:.3%} <= "
              f"{OVERHEAD_TARGET:.0%}: {r['target_overhead']}")
    print(f"\nProjection: overhead = (stall of a stage end that asks + the wait for its answer at the next stage end)"
          f" / ({PAPER_STAGE} x {fixed['iteration_s'] * 1e3:.1f} ms, Fixed's measured iteration time).")
    print(f"Total time {total / 60:.1f} min; load average {load_before[0]:.1f} before, "
          f"{results['machine']['load_after'][0]:.1f} after, on {os.cpu_count()} cores.")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "stall_quick" if args.quick else "stall"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(table)
    print(f"wrote {args.out / f'{stem}.json'} and {stem}.md")
    failed = [r["label"] for r in asynchronous if "FAIL" in (r["target_stall"], r["target_overhead"])]
    if failed:
        print(f"targets FAILED for: {', '.join(failed)}")
    return results


if __name__ == "__main__":
    main()
