"""Atomic result files and the run record of an experiment.

An experiment writes each result file with `write_text`, `write_json` or
`write_figure`. These write to a temporary file in the destination folder and
then rename it over the destination with os.replace, so another process that
reads the file gets either the old content or the complete new content, never
a partial file. The files get the mode a plain open() would give them (0666
minus the umask), not the 0600 of tempfile.mkstemp.

`run_info` describes one run (command line, git commit, jax version, backend
and devices, platform, UTC timestamp, wall time) and `write_run_info` stores
it as run_info.json:

  start = time.perf_counter()
  ...
  info = outputs.run_info(["python", "-m", "experiments.my_study", *argv],
                          time.perf_counter() - start, {"seed": args.seed})
  outputs.write_run_info(out_dir, info)
"""

import contextlib
import json
import os
import pathlib
import platform
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RUN_INFO_FILE = "run_info.json"
# Keys of every run_info() record, before the caller's extra keys.
RUN_INFO_KEYS = (
    "command",
    "git_commit",
    "git_dirty",
    "jax_version",
    "jax_backend",
    "devices",
    "python_version",
    "platform",
    "cpu_count",
    "timestamp_utc",
    "wall_time_s",
)

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_GIT_TIMEOUT_S = 30


def _current_umask() -> int:
  # os.umask can only be read by setting it, so set it back at once. This
  # briefly changes the umask of the whole process, which matters only if
  # another thread creates files at that moment.
  umask = os.umask(0)
  os.umask(umask)
  return umask


def write_atomic(path: os.PathLike | str,
                 write: Callable[[pathlib.Path], None]) -> None:
  """Write `path` through a temporary file in its folder and os.replace.

  `write` receives the temporary file's path and must write the whole
  content there. If it raises, the temporary file is removed, `path` is left
  as it was and the exception propagates. The data is not fsynced, so a
  crash of the machine soon after the call can still lose the new content.
  """
  path = pathlib.Path(path)
  fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=".tmp")
  os.close(fd)
  temp_path = pathlib.Path(temp_name)
  try:
    write(temp_path)
    os.chmod(temp_path, 0o666 & ~_current_umask())
    os.replace(temp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      temp_path.unlink()
    raise


def write_text(path: os.PathLike | str, text: str) -> None:
  """Write `text` to `path` as UTF-8, atomically."""
  write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json(path: os.PathLike | str, value: Any) -> None:
  """Write `value` to `path` as indented JSON with a final newline, atomically."""
  write_text(path, json.dumps(value, indent=2) + "\n")


def write_figure(path: os.PathLike | str, figure: Figure, dpi: int = 120) -> None:
  """Render a matplotlib `figure` to `path` as PNG, atomically.

  The figure gets an Agg canvas, so it needs no pyplot and no display.
  """
  FigureCanvasAgg(figure)
  write_atomic(path, lambda temp: figure.savefig(temp, format="png", dpi=dpi))


def git_commit(repo_root: os.PathLike | str = _REPO_ROOT) -> tuple[str | None, bool | None]:
  """Return (HEAD commit hash, whether the work tree has uncommitted changes).

  Both are None when git is missing, fails or times out, or `repo_root` is
  not inside a git work tree.
  """
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root,
                            capture_output=True, text=True, check=True,
                            timeout=_GIT_TIMEOUT_S).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo_root,
                            capture_output=True, text=True, check=True,
                            timeout=_GIT_TIMEOUT_S).stdout
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit, bool(status.strip())


def run_info(command: Sequence[str], wall_time_s: float,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Describe one run: command line, code version, software and hardware.

  Args:
    command: the command line as a list of arguments, for example
      ``["python", "-m", "experiments.my_study", *argv]``. It is stored
      joined with shlex, so it can be pasted into a shell.
    wall_time_s: seconds the run took, rounded to 0.1 s in the record.
    extra: run settings and counts, added after the RUN_INFO_KEYS entries.

  Returns:
    A JSON-serializable dict with the RUN_INFO_KEYS keys, then `extra`. The
    timestamp is the UTC time of this call.

  Raises:
    ValueError: if a key of `extra` is one of RUN_INFO_KEYS.
  """
  extra = dict(extra or {})
  clashes = sorted(set(extra) & set(RUN_INFO_KEYS))
  if clashes:
    raise ValueError(f"invalid extra keys {clashes}: run_info sets these keys itself. "
                     "Rename them.")
  commit, dirty = git_commit()
  return {
      "command": shlex.join(command),
      "git_commit": commit,
      "git_dirty": dirty,
      "jax_version": jax.__version__,
      "jax_backend": jax.default_backend(),
      "devices": [str(device) for device in jax.devices()],
      "python_version": platform.python_version(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "wall_time_s": round(wall_time_s, 1),
      **extra,
  }


def write_run_info(out_dir: os.PathLike | str, info: Mapping[str, Any]) -> pathlib.Path:
  """Write `info` (from `run_info`) to out_dir/run_info.json and return that path."""
  path = pathlib.Path(out_dir) / RUN_INFO_FILE
  write_json(path, dict(info))
  return path
