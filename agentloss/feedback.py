"""Text feedback: objectives whose result at a stage end is a sentence, not a number.

The paper's agent can take "textual description" feedback, from a person or a multimodal quality
model ("textures look too smooth"). A ``TextFeedback`` is passed in ``objectives=`` like any
objective; at each stage end it describes the restored probe set, and what it says is recorded in
``StageRecord.texts`` and shown to language-model agents in the history part of their prompt
(numbers-only agents ignore it). A source that raises is a recorded error for that stage; it never
stops training or blocks the decision.

Example:
    >>> import torch
    >>> critic = CallableFeedback(lambda imgs, refs: "too dark" if imgs[0].mean() < 0.3 else "fine", name="look")
    >>> critic.describe([torch.zeros(1, 3, 8, 8)]), critic.info().kind
    ('too dark', 'text')

Three sources come with the package:

- :class:`VisionFeedback`: a multimodal model behind an OpenAI-compatible chat endpoint (a local
  ``llama-server -m model.gguf --mmproj mmproj.gguf``, vLLM, OpenAI) looks at the restored probe
  images and says what it sees;
- :class:`TerminalFeedback`: a person types a line at each stage end (``agentloss run --ask``);
- :class:`HighFrequencyCritic`: a deterministic critic comparing the high-frequency energy of the
  restored probe with its references ("too smooth" / "noisy" / "natural"), for benchmarks that hide a
  statistic from the agent and describe it only in words; :func:`high_frequency_ratio` is the number.

    >>> ref = [torch.rand(3, 32, 32)]
    >>> HighFrequencyCritic().describe(ref, ref), high_frequency_ratio(ref, ref)
    ('textures look natural', 1.0)
"""

from __future__ import annotations

import base64
import io
import math
import os
import queue
import re
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from .types import ObjectiveInfo

__all__ = ["DEFAULT_VISION_PROMPT", "HF_SIGMA", "MAX_TEXT_CHARS", "CallableFeedback", "HighFrequencyCritic",
           "TerminalFeedback", "TextFeedback", "VisionFeedback", "clean_text", "high_frequency_ratio",
           "is_text_objective", "png_data_url"]

MAX_TEXT_CHARS = 1000  # one stage's feedback in the prompt: a few sentences, never a document
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: object) -> str:
    """Feedback as prompt-safe text: a string, control characters removed, at most ``MAX_TEXT_CHARS``.

    >>> clean_text("  noisy\\x1b[31m grain ") , len(clean_text("x" * 5000))
    ('noisy[31m grain', 1000)
    """
    if not isinstance(text, str):
        raise TypeError(f"text feedback must be a string, got {type(text).__name__}")
    text = _CONTROL.sub("", text).strip()
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def is_text_objective(obj: object) -> bool:
    return getattr(obj, "kind", "score") == "text"


class TextFeedback:
    """Base class: a name, a description (what the source judges), and ``describe`` per stage end.

    Subclasses implement ``describe(restored, references)``; ``prepare()`` loads what they need (the
    scheduler calls it before training, so a source that cannot work fails early).
    """

    kind = "text"
    name: str = "feedback"
    description: str = ""
    needs_reference: bool = False

    def prepare(self) -> None:
        """Nothing to load here."""

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        raise NotImplementedError

    def info(self) -> ObjectiveInfo:
        # higher_is_better has no meaning for text; kind tells agents not to read a direction.
        return ObjectiveInfo(self.name, True, self.description, None, self.needs_reference, kind="text")


class CallableFeedback(TextFeedback):
    """A user function ``fn(restored, references) -> str`` as a text source (``references`` is ``None``
    unless ``needs_reference``)."""

    def __init__(self, fn: Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor] | None], str], *, name: str,
                 description: str = "", needs_reference: bool = False):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name
        self.description = description or f"text feedback from {name}"
        self.needs_reference = needs_reference

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        return self.fn(restored, references)


# -- images as the model sees them -----------------------------------------------------------------

def _as_chw(img: torch.Tensor) -> torch.Tensor:
    """A probe image (``CxHxW`` or ``1xCxHxW``, 1 or 3 channels) as a CPU ``CxHxW`` float tensor in [0, 1]."""
    x = img.detach()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a 1- or 3-channel CxHxW image, got shape {tuple(img.shape)}")
    return x.float().cpu().clamp(0, 1)


def _to_pil(img: torch.Tensor) -> Any:
    """A probe image as a PIL image (8 bits, rounded: torchvision's float conversion truncates)."""
    from torchvision.transforms.functional import to_pil_image

    return to_pil_image(_as_chw(img).mul(255).round().to(torch.uint8))


def png_data_url(img: torch.Tensor, max_size: int = 256) -> str:
    """``img`` as a ``data:image/png;base64,...`` URL, shrunk (aspect kept, never enlarged) so that its
    longer side is at most ``max_size``.

    >>> url = png_data_url(torch.rand(3, 64, 32), max_size=16)
    >>> url.startswith("data:image/png;base64,")
    True
    """
    from PIL import Image

    pil = _to_pil(img)
    if max(pil.size) > max_size:
        pil.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)  # antialiased, aspect ratio kept
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- a multimodal model --------------------------------------------------------------------------------

DEFAULT_VISION_PROMPT = (
    "These images were restored by an image-restoration network that is still training. In one or two "
    "sentences, describe their visual quality: sharpness, textures, noise, artefacts, colours. Do not "
    "describe what they show."
)
_NO_KEY = "sk-no-key-required"  # local servers ignore the key, but the openai client insists on one


class VisionFeedback(TextFeedback):
    """A multimodal model's words on the restored probe images, through an OpenAI-compatible chat endpoint.

    At each stage end the first ``max_images`` restored probe images, shrunk to at most ``image_size``
    px on their longer side and PNG-encoded as base64 data URLs, go with ``prompt`` in one user message
    (``content``: a text part, then one ``image_url`` part per image) of one chat completion request;
    the answer's text is the feedback. The request goes through
    :class:`~agentloss.backends.openai_backend.OpenAIBackend`, so time is bounded whatever the server
    does: ``timeout`` seconds for the whole call (one retry after a fast failure such as HTTP 500 or a
    refused connection, if time is left), and answers over 4 MiB are refused. A failed call raises
    ``BackendError``; the scheduler records it for that stage and goes on without the text.

    ``api_key_env`` names the environment variable holding the key; ``None`` (a local server) sends a
    placeholder, never the ``OPENAI_API_KEY`` of the environment to whatever ``base_url`` is.
    ``prepare()`` (before training) checks that a server answers at ``base_url``.

    Example (needs a server, see docs/text-feedback.md):
        >>> vision = VisionFeedback("http://127.0.0.1:8080/v1", max_images=1)
        >>> vision.info().kind
        'text'
        >>> vision.describe([torch.rand(3, 64, 64)])  # doctest: +SKIP
        'The images look soft, with smeared fine textures and slight ringing along edges.'
    """

    def __init__(self, base_url: str, model: str = "default", prompt: str = DEFAULT_VISION_PROMPT, *,
                 api_key_env: str | None = None, max_images: int = 2, timeout: float = 60.0, image_size: int = 256,
                 max_tokens: int = 200, name: str = "vision", description: str = ""):
        from .backends.base import looks_like_key
        from .backends.openai_backend import OpenAIBackend

        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8080/v1, got {base_url!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string: it tells the model what to judge")
        if int(max_images) < 1 or int(image_size) < 8 or int(max_tokens) < 1 or not float(timeout) > 0:
            raise ValueError(f"need max_images >= 1, image_size >= 8, max_tokens >= 1 and timeout > 0; got "
                             f"{max_images}, {image_size}, {max_tokens}, {timeout}")
        if api_key_env is not None and looks_like_key(api_key_env):
            # Never echoed: it is most likely the key itself.
            raise ValueError("api_key_env must name an environment variable (e.g. OPENAI_API_KEY); this value looks "
                             "like an API key (not shown): put the key in the variable, not here")
        self.base_url, self.model, self.prompt = base_url, model, prompt
        self.api_key_env, self.max_images, self.image_size = api_key_env, int(max_images), int(image_size)
        self.timeout, self.max_tokens = float(timeout), int(max_tokens)
        self.name = name
        self.description = description or (f"a multimodal model ({model}) describing the restored probe images")
        config: dict[str, Any] = {"model": model, "base_url": base_url, "timeout": self.timeout,
                                  "deadline": self.timeout, "max_retries": 1, "backoff": 0.25}
        if api_key_env is None:
            config["api_key"] = _NO_KEY
        else:
            config["api_key_env"] = api_key_env
        self.backend = OpenAIBackend(config)

    def messages(self, restored: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """The one user message sent for ``restored`` (the prompt, then the images)."""
        parts: list[dict[str, Any]] = [{"type": "text", "text": self.prompt}]
        for img in list(restored)[: self.max_images]:
            parts.append({"type": "image_url", "image_url": {"url": png_data_url(img, self.image_size)}})
        return [{"role": "user", "content": parts}]

    def prepare(self) -> None:
        """Check that a server answers at ``base_url`` (``GET /models``), so a run does not start without it."""
        from .backends.base import BackendError
        from .objectives import ObjectiveError

        where = self.backend._url()
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise ObjectiveError(f"{self.name}: the environment variable {self.api_key_env} (api_key_env) is not set")
        try:
            import openai

            client = self.backend._get_client()
            client.models.list(timeout=min(self.timeout, 10.0))
        except ImportError:
            raise ObjectiveError(f"{self.name}: VisionFeedback needs the openai package: pip install 'openai>=1.30'")
        except BackendError as e:
            raise ObjectiveError(f"{self.name}: {e}") from None
        except openai.APIStatusError as e:
            if e.status_code in (401, 403):
                raise ObjectiveError(f"{self.name}: the server at {where} refused the key (HTTP {e.status_code}); "
                                     f"check api_key_env") from None
            # Any other answer (a server without /models) still shows a server listening there.
        except Exception as e:  # noqa: BLE001 - connection refused, timeout, bad URL: all mean "no server"
            detail = self.backend._redact(f"{type(e).__name__}: {e}")
            raise ObjectiveError(
                f"{self.name}: no OpenAI-compatible server answers at {where} ({detail}); start one (e.g. "
                f"llama-server -m model.gguf --mmproj mmproj.gguf --port 8080, see docs/text-feedback.md) or "
                f"correct base_url") from None

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        from .backends.base import BackendError

        result = self.backend.chat(self.messages(restored), max_tokens=self.max_tokens,  # type: ignore[arg-type]
                                   temperature=0.0)
        text = result.text.strip()
        if not text:  # a model that says nothing has failed, not judged the images fine
            raise BackendError(f"{self.backend._where()}: the answer has no text "
                               f"(finish_reason {result.finish_reason!r})")
        return text

    def close(self) -> None:
        self.backend.close()


# -- a person at the terminal ----------------------------------------------------------------------------

class TerminalFeedback(TextFeedback):
    """A person's line of feedback, typed at each stage end (``agentloss run --ask``).

    ``describe`` prints (to ``out``, default ``sys.stderr``) where the restored probe images were saved
    (with ``save_dir``) and the stage's scores (when given), then ``prompt``, and waits at most ``timeout``
    seconds for one line on ``stream`` (default ``sys.stdin``, looked up at each call). An empty line, no
    line within the timeout, or a closed stream all mean "no feedback this stage": ``""`` is returned and
    recorded (an empty text, not an error), and training goes on. After the stream closes, later stages
    do not wait. A line typed ahead waits for the next stage end; a line half typed when the time runs
    out is kept, and completed, for the next one.

    A stream with a file descriptor (a terminal, a pipe) is read with ``select``; one without (a
    ``StringIO``) by a helper thread.

    Example:
        >>> ask = TerminalFeedback(timeout=0.1, stream=io.StringIO("edges look haloed\\n"), out=io.StringIO())
        >>> ask.describe([torch.rand(3, 8, 8)]), ask.describe([torch.rand(3, 8, 8)])
        ('edges look haloed', '')
    """

    def __init__(self, timeout: float = 60.0, prompt: str = "feedback for the agent (Enter to skip)> ",
                 stream: TextIO | None = None, out: TextIO | None = None, *, name: str = "person",
                 description: str = "", save_dir: str | os.PathLike[str] | None = None):
        if not float(timeout) > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout, self.prompt, self.stream, self.out = float(timeout), prompt, stream, out
        self.name = name
        self.description = description or "a person watching the run, typing a line at stage ends (may be empty)"
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self._pending = b""  # bytes read past the last line (typed ahead), or a line begun before a timeout
        self._closed = False  # the stream reached its end: no more waiting
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None, *,
                 scores: Mapping[str, float | None] | None = None) -> str:
        out = self.out if self.out is not None else sys.stderr
        if self._closed:
            return ""
        if self.save_dir is not None:
            paths = self._save(restored)
            print(f"\nrestored probe images: {', '.join(str(p) for p in paths)}", file=out)
        if scores:
            print("probe scores: " + "  ".join(f"{k}={'n/a' if v is None else f'{v:.4g}'}" for k, v in scores.items()),
                  file=out)
        print(self.prompt, end="", file=out, flush=True)
        line = self._read_line()
        if line is None:
            print(f"\n(no answer within {self.timeout:g} s: no feedback this stage)", file=out, flush=True)
            return ""
        if self._closed and not line:
            print("\n(input closed: no more feedback asked)", file=out, flush=True)
        return line.strip()

    def _save(self, restored: Sequence[torch.Tensor]) -> list[Path]:
        assert self.save_dir is not None
        self.save_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, img in enumerate(restored):
            path = self.save_dir / f"probe_{i}.png"  # overwritten each stage: the person looks at the latest
            _to_pil(img).save(path)
            paths.append(path)
        return paths

    def _read_line(self) -> str | None:
        """One line without its newline; ``None`` on timeout; ``""`` (and ``_closed``) at the end of the stream."""
        stream = self.stream if self.stream is not None else sys.stdin
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            fd = None
        if fd is not None:
            try:
                return self._read_fd(fd)
            except OSError:  # select() on a pipe (Windows): fall back to a reading thread
                pass
        return self._read_thread(stream)

    def _read_fd(self, fd: int) -> str | None:
        # os.read, not stream.readline: a line the stream buffered would be invisible to select(), and
        # readline() blocks on a half-typed line. (Anything read from sys.stdin before, through its
        # buffer, is not seen here.)
        end = time.monotonic() + self.timeout
        while b"\n" not in self._pending:
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self._closed = True
                line, self._pending = self._pending, b""
                return line.decode("utf-8", errors="replace")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    def _read_thread(self, stream: TextIO) -> str | None:
        # One readline at a time: a read still waiting from an earlier stage is waited on again.
        if (self._reader is None or not self._reader.is_alive()) and self._lines.empty():
            def read() -> None:
                try:
                    self._lines.put(stream.readline())
                except (OSError, ValueError):  # a closed or broken stream is the end of the input
                    self._lines.put("")

            self._reader = threading.Thread(target=read, daemon=True, name=f"agentloss-{self.name}-input")
            self._reader.start()
        try:
            line = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            return None
        if not line:
            self._closed = True
        return line.rstrip("\n")


# -- a deterministic critic ----------------------------------------------------------------------------

HF_SIGMA = 1.5  # the Gaussian blur that separates "high frequency" (px); kernel 2 * ceil(3 sigma) + 1 = 11 taps
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _high_frequency_energy(img: torch.Tensor) -> float:
    from torchvision.transforms.functional import gaussian_blur

    x = _as_chw(img)  # float32: the blur in float64 is ~15x slower on a CPU (26 s for a 2K image pair)
    y = x if x.shape[0] == 1 else (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)
    k = 2 * math.ceil(3 * HF_SIGMA) + 1
    if min(y.shape[-2:]) <= k // 2:  # reflect padding needs more pixels than the kernel's radius
        raise ValueError(f"images must be at least {k // 2 + 1} px on each side, got {tuple(y.shape[-2:])}")
    return float(((y - gaussian_blur(y, [k, k], [HF_SIGMA, HF_SIGMA])).double() ** 2).sum())


def high_frequency_ratio(restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> float:
    """High-frequency energy of ``restored`` relative to ``references`` (1.0: as much fine detail).

    For each image: luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (BT.601; a 1-channel image is its own
    ``Y``) of the image clamped to [0, 1], in float32; its high-frequency part ``Y - G(Y)`` with ``G``
    a Gaussian blur of sigma ``HF_SIGMA`` = 1.5 px (11x11 kernel, reflect padding:
    ``torchvision.transforms.functional.gaussian_blur``); its energy the sum of squares of that over the
    pixels (in float64). The ratio is the energy summed over ``restored`` over the energy summed over ``references``
    (pairs must have equal sizes). Below 1: smoother than the references (blur, lost texture); above:
    more fine structure than they have (noise, grain, ringing, GAN artefacts).

    >>> img = torch.rand(3, 32, 32)
    >>> high_frequency_ratio([img], [img]), high_frequency_ratio([img * 0.5], [img])
    (1.0, 0.25)
    """
    restored, references = list(restored), list(references)
    if not restored or len(restored) != len(references):
        raise ValueError(f"need as many restored images as references (at least one), got {len(restored)} "
                         f"and {len(references)}")
    for i, (a, b) in enumerate(zip(restored, references)):
        if a.shape[-2:] != b.shape[-2:]:
            raise ValueError(f"image {i}: restored size {tuple(a.shape[-2:])} but reference {tuple(b.shape[-2:])}")
    mine = sum(_high_frequency_energy(a) for a in restored)
    theirs = sum(_high_frequency_energy(b) for b in references)
    if theirs == 0:
        if mine == 0:
            return 1.0  # both flat: nothing to compare, nothing differs
        raise ValueError("the references have no high-frequency energy (flat images): the ratio is undefined")
    return mine / theirs


class HighFrequencyCritic(TextFeedback):
    """Words for :func:`high_frequency_ratio` of the restored probe to its references: below ``low``
    "textures look too smooth and blurry", above ``high`` "noisy, grainy artefacts", between them
    "textures look natural". The number itself is never said: a benchmark can hide the statistic and
    give the agent only what a critic would say about it.

    >>> critic = HighFrequencyCritic()
    >>> ref = torch.rand(3, 32, 32)
    >>> critic.describe([ref * 0.8], [ref]), critic.describe([ref], [ref])
    ('textures look too smooth and blurry', 'textures look natural')
    """

    needs_reference = True
    SMOOTH = "textures look too smooth and blurry"
    NOISY = "noisy, grainy artefacts"
    NATURAL = "textures look natural"

    def __init__(self, low: float = 0.9, high: float = 1.1, *, name: str = "critic", description: str = ""):
        if not 0 < float(low) < float(high) or not math.isfinite(float(high)):
            raise ValueError(f"need 0 < low < high (finite), got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self.name = name
        self.description = description or "a critic's eye on the fine textures of the restored probe images"

    def describe(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> str:
        if references is None:
            raise ValueError(f"{self.name} compares with the probe's references; none were given")
        ratio = high_frequency_ratio(restored, references)
        return self.SMOOTH if ratio < self.low else self.NOISY if ratio > self.high else self.NATURAL
