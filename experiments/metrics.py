"""Metrics in workdir/metrics.jsonl, one JSON object per logged step.

Lines are appended with a single write each and flushed, so a killed run
leaves at most one incomplete last line. On resume, `MetricsLog.truncate`
rewrites the file atomically without that line and without every line logged
after the checkpoint the run restarts from.
"""

import json
import math
import os
import pathlib
from typing import Any

from experiments import outputs


def _finite_or_none(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsLog:
  """Append-only JSONL metrics with resume support."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)

  def read(self) -> list[dict]:
    """Read all complete lines as dicts (a truncated last line is skipped)."""
    if not self.path.exists():
      return []
    rows = []
    for line in self.path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        break  # an interrupted write; nothing after it is trusted
    return rows

  def truncate(self, last_step: int) -> None:
    """Keep only rows with step <= last_step, rewriting the file atomically."""
    rows = [r for r in self.read() if r.get("step", 0) <= last_step]
    outputs.write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

  def write(self, step: int, values: dict[str, Any]) -> None:
    """Append one row ``{"step": step, **values}``; non-finite floats become null."""
    row = {"step": int(step), **{k: _finite_or_none(float(v)) if hasattr(v, "__float__") else v
                                 for k, v in values.items()}}
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
      os.write(fd, line)
      os.fsync(fd)
    finally:
      os.close(fd)


class TensorBoardWriter:
  """Scalars as TensorBoard event files, when tensorboardX is installed."""

  def __init__(self, logdir: str | pathlib.Path):
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      self.writer = None
    else:
      self.writer = SummaryWriter(str(logdir))

  def write(self, step: int, values: dict[str, Any]) -> None:
    if self.writer is None:
      return
    for key, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(float(value)):
        self.writer.add_scalar(key, float(value), step)
    self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
