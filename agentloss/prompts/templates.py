"""Prompt templates: loading, the Jinja2 sandbox and rendering, for every agent's prompt.

Templates are rendered in a sandbox (``jinja2.sandbox.SandboxedEnvironment``, ``StrictUndefined``,
no autoescape, ``trim_blocks``/``lstrip_blocks``) from plain variables, so that a custom template
can reword a prompt but cannot reach Python objects. Filters: ``num`` (a weight as a plain decimal)
and ``score`` (a score with 4 decimals). ``TemplateSet`` is the machinery; the paper's prompt
(``PromptTemplates``, in ``prompts.paper``) and the guided agent's (``GuidedTemplates``, in
``prompts.guided``) are its two sets, each overridable part by part.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from typing_extensions import Self

from ..proposal import format_number

__all__ = ["PromptTemplateError", "TemplateSet", "fmt_score"]


TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2")
MAX_RANGE_ITEMS = 10_000  # all range() items of one render together: nested loops cannot hang a run
MAX_RENDERED_CHARS = 200_000  # a prompt longer than this is a template bug, not a prompt


class PromptTemplateError(ValueError):
    """A prompt template that cannot be loaded or rendered (syntax, missing variable, unsafe access).

    Example:
        >>> from agentloss.prompts import PromptTemplates
        >>> try:
        ...     PromptTemplates(system="{{ ''.__class__ }}").render("system", {})
        ... except PromptTemplateError as e:
        ...     print(type(e.__cause__).__name__)
        SecurityError
    """


def fmt_score(value: float | None) -> str:
    """A score with 4 decimals (``n/a`` when missing or not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    v = float(value)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` bounded: ``'x' * 10**10`` would otherwise hang agent construction."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 100:
            raise PromptTemplateError("exponents above 100 are not allowed in templates")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                    raise PromptTemplateError(f"a repeated string or list over {MAX_RENDERED_CHARS} items")
        return super().call_binop(context, operator, left, right)


def _environment() -> SandboxedEnvironment:
    env = _BoundedSandbox(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.globals.pop("lipsum", None)  # lipsum(n=10**9) builds its whole text in one call
    env.filters["num"] = lambda v: format_number(float(v))
    env.filters["score"] = fmt_score
    return env


class TemplateSet:
    """Named prompt parts; each ``None`` (the packaged default), a file path or a template string.

    Subclasses name their parts (``PARTS``), the packaged file of each (``FILES``) and the sample
    variables ``check`` renders them with. A ``pathlib.Path`` is always a file. A ``str`` is a file
    when it is one line without ``{`` that names an existing file or ends in
    ``.j2``/``.jinja``/``.jinja2``/``.txt`` (a missing file is then an error, not a template);
    otherwise it is the template text itself. Templates are compiled here, so a syntax error is
    raised at construction, as ``PromptTemplateError``.
    """

    PARTS: tuple[str, ...] = ()
    FILES: ClassVar[Mapping[str, str]] = {}

    def __init__(self, **parts: Any):
        unknown = set(parts) - set(self.PARTS)
        if unknown:
            raise PromptTemplateError(f"unknown prompt part(s) {sorted(unknown)}; the parts are {list(self.PARTS)}")
        self._env = _environment()
        self._sources: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._templates: dict[str, Any] = {}
        for part in self.PARTS:
            text, label = _load_source(part, parts.get(part), self.FILES[part])
            try:
                self._templates[part] = self._env.from_string(text)
            except TemplateError as exc:
                raise PromptTemplateError(f"prompt template {part!r} ({label}) does not compile: {exc}") from exc
            self._sources[part] = text
            self._labels[part] = label

    @classmethod
    def coerce(cls, value: TemplateSet | Mapping[str, Any] | None) -> Self:
        """``None`` -> defaults; a mapping with keys among the parts -> those parts.

        Example:
            >>> from agentloss.prompts import PromptTemplates
            >>> PromptTemplates.coerce({"system": "You are {{ 'an' }} expert."}).render("system", {})
            'You are an expert.'
        """
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise PromptTemplateError(f"templates must be None, a dict or {cls.__name__}, got {type(value).__name__}")

    def render(self, part: str, variables: Mapping[str, Any]) -> str:
        """Render one part; any failure (unsafe attribute, undefined variable) is a ``PromptTemplateError``."""
        if part not in self._templates:
            raise PromptTemplateError(f"unknown prompt part {part!r}; the parts are {list(self.PARTS)}")
        try:
            chunks, size = [], 0
            for chunk in self._templates[part].generate(**variables, range=_RangeBudget()):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise PromptTemplateError(f"the rendered prompt exceeds {MAX_RENDERED_CHARS} characters")
            text = "".join(chunks)
        except Exception as exc:  # SecurityError, UndefinedError, errors inside filters ...
            kind = type(exc).__name__
            raise PromptTemplateError(
                f"prompt template {part!r} ({self._labels[part]}) failed to render: {kind}: {exc}"
            ) from exc
        return _tidy(text)

    def sample_variables(self) -> dict[str, Any]:
        """Variables of a small complete sample decision, for ``check``."""
        raise NotImplementedError

    def check(self) -> None:
        """Render every part once with a small sample context: a bad template fails here, not mid-run."""
        variables = self.sample_variables()
        for part in self.PARTS:
            self.render(part, variables)

    def describe(self) -> dict[str, dict[str, str]]:
        """Where each part came from and a hash of its text, for the run's metadata."""
        return {
            part: {"source": self._labels[part], "sha256": hashlib.sha256(self._sources[part].encode()).hexdigest()[:16]}
            for part in self.PARTS
        }


TS = TypeVar("TS", bound=TemplateSet)


def _load_source(part: str, spec: Any, package_file: str) -> tuple[str, str]:
    """A part's text and where it came from. Files are read only when named with a template suffix
    (``.j2``, ``.jinja``, ``.jinja2``): a path mistyped into a template string never reads, say,
    ``/proc/self/environ`` into a prompt and the run's records."""
    if spec is None:
        ref = importlib.resources.files("agentloss").joinpath("templates", package_file)
        return ref.read_text(encoding="utf-8"), f"package:{package_file}"
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec).expanduser()
        if path.suffix not in TEMPLATE_SUFFIXES:
            raise PromptTemplateError(f"prompt template file for {part!r} must end in {', '.join(TEMPLATE_SUFFIXES)}: "
                                      f"{path}")
        if not path.is_file():
            raise PromptTemplateError(f"prompt template file for {part!r} not found: {path}")
        return path.read_text(encoding="utf-8"), str(path)
    if isinstance(spec, str):
        return spec, "string"
    raise PromptTemplateError(f"prompt template {part!r} must be a path or a template string, got {type(spec).__name__}")


def _looks_like_path(text: str) -> bool:
    """One line without ``{`` that ends in a template suffix, or names an existing file (then refused
    unless it has the suffix, rather than silently used as the template's text)."""
    if "\n" in text or "{" in text or not text.strip():
        return False
    if text.endswith((*TEMPLATE_SUFFIXES, ".txt")):
        return True
    try:
        return Path(text).expanduser().is_file()
    except OSError:
        return False


class _RangeBudget:
    """``range`` for templates with one budget of items per render (the sandbox bounds each range alone)."""

    def __init__(self) -> None:
        self.left = MAX_RANGE_ITEMS

    def __call__(self, *args: int) -> range:
        r = range(*args)
        self.left -= len(r)
        if self.left < 0:
            raise PromptTemplateError(f"the template's loops exceed {MAX_RANGE_ITEMS} range() items in one render")
        return r


def _tidy(text: str) -> str:
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()
