"""Run records: one JSON object per stage, appended to ``run_dir/stages.jsonl`` as it happens.

A record is plain data (``agentloss.types.StageRecord``) so that a run can be replayed, resumed and plotted
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
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .types import StageRecord, json_safe

__all__ = ["META_FILE", "RECORDS_FILE", "RecordWriter", "StageRecord", "iter_records", "json_safe", "read_meta",
           "read_records"]

log = logging.getLogger("agentloss")

RECORDS_FILE = "stages.jsonl"
META_FILE = "run.json"


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

    def rewrite(self, records: list[StageRecord]) -> None:
        """Replace the file with ``records`` (atomically). On resume the checkpoint's history is the
        truth: stages the interrupted run wrote after it are re-done, and a line it lost (killed
        mid-write) comes back, so the file reads as one complete, consistent history."""
        self._replace(records)

    def truncate_after(self, stage: int) -> None:
        """Drop lines of stages later than ``stage`` (what a resumed run re-does)."""
        if not self.path.exists():
            return
        self._replace([r for r in read_records(self.run_dir) if r.stage <= stage])

    def _replace(self, kept: list[StageRecord]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r.to_dict(), allow_nan=False) + "\n" for r in kept)
        os.replace(tmp, self.path)


def iter_records(run_dir: str | os.PathLike[str]) -> Iterator[StageRecord]:
    """Records in file order. A half-written last line (the process died mid-write) is skipped
    quietly; an unreadable line anywhere else is skipped with a warning naming it, never silently."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / RECORDS_FILE
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise TypeError(f"a record is a JSON object, this line holds {type(data).__name__}")
            record = StageRecord.from_dict(data)
        except (ValueError, TypeError, KeyError) as e:
            if i != last:
                log.warning("%s line %d is not a readable stage record (%s); skipped", path, i + 1, e)
            continue
        yield record


def read_records(run_dir: str | os.PathLike[str]) -> list[StageRecord]:
    """All stage records of a run directory (or of a ``stages.jsonl`` path), in file order."""
    return list(iter_records(run_dir))


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / META_FILE
    return json.loads(path.read_text()) if path.exists() else {}
