"""Run records: one JSON object per stage, appended to ``run_dir/stages.jsonl`` as it happens.

A record is plain data (``StageRecord``) so that a run can be replayed, resumed and plotted
without the objects that produced it. Every line is flushed and fsynced before the scheduler
goes on, so a crash loses nothing already written.

Example:
    >>> import tempfile, os
    >>> rec = StageRecord(stage=0, iteration=0, weights={"l1": 1.0}, scores={"niqe": 5.1})
    >>> d = tempfile.mkdtemp()
    >>> writer = RecordWriter(d)
    >>> writer.append(rec)
    >>> [r.scores for r in read_records(d)]
    [{'niqe': 5.1}]
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORDS_FILE = "stages.jsonl"
META_FILE = "run.json"


@dataclass
class StageRecord:
    """What happened at one stage end (stage 0 is the initial state S0, scored before training).

    ``weights`` are the weights the stage was trained with (for S0: the initial weights);
    ``next_weights`` are those decided for the following stage. ``scores`` holds the mean of each
    objective (``None`` when it failed), ``per_image`` the per-image scores. ``decision`` holds
    what the agent said (thoughts, raw exchange, retries) and ``fallback`` the reason the previous
    weights were kept, if they were.
    """

    stage: int
    iteration: int
    weights: dict[str, float]
    scores: dict[str, float | None] = field(default_factory=dict)
    per_image: dict[str, list[float | None]] = field(default_factory=dict)
    next_weights: dict[str, float] | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None
    errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON; store them as None so every line stays parseable by any reader."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(obj.tolist())
    return str(obj)


class RecordWriter:
    """Appends records to ``stages.jsonl`` durably and writes the run's metadata once."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / RECORDS_FILE

    def archive_existing(self) -> Path | None:
        """Move a previous run's records aside (never delete them) so a new run starts a clean file.

        Returns the new name of the old file, or ``None`` when there was nothing to move.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.run_dir / f"stages.{stamp}.jsonl"
        n = 1
        while target.exists():
            target, n = self.run_dir / f"stages.{stamp}-{n}.jsonl", n + 1
        os.replace(self.path, target)
        return target

    def write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.run_dir / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(json_safe(meta), indent=2))
        os.replace(tmp, self.run_dir / META_FILE)

    def append(self, record: StageRecord) -> None:
        line = json.dumps(record.to_dict(), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, stage: int) -> None:
        """Drop lines of stages later than ``stage``: a resumed run re-does them, and the file must
        then read as one consistent history rather than two interleaved ones."""
        if not self.path.exists():
            return
        kept = [r for r in read_records(self.run_dir) if r.stage <= stage]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r.to_dict(), allow_nan=False) + "\n" for r in kept)
        os.replace(tmp, self.path)


def iter_records(run_dir: str | os.PathLike[str]) -> Iterator[StageRecord]:
    path = Path(run_dir)
    if path.is_dir():
        path = path / RECORDS_FILE
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield StageRecord.from_dict(json.loads(line))
            except json.JSONDecodeError:
                # A half-written last line (the process died mid-write) is skipped, not fatal.
                continue


def read_records(run_dir: str | os.PathLike[str]) -> list[StageRecord]:
    """All stage records of a run directory (or of a ``stages.jsonl`` path), in file order."""
    return list(iter_records(run_dir))


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}
