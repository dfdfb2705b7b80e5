"""Tests of experiments.outputs: atomic writes and the run record."""

import json
import os
import stat

from matplotlib.figure import Figure
import pytest

from experiments import outputs


@pytest.fixture
def umask_022():
  previous = os.umask(0o022)
  yield
  os.umask(previous)


def _temp_files(folder):
  return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_write_text_creates_file(tmp_path):
  path = tmp_path / "result.md"
  outputs.write_text(path, "first\n")
  assert path.read_text(encoding="utf-8") == "first\n"
  assert _temp_files(tmp_path) == []


def test_write_text_replaces_existing(tmp_path):
  path = tmp_path / "result.md"
  path.write_text("old content that is longer than the new one\n")
  outputs.write_text(path, "new\n")
  assert path.read_text(encoding="utf-8") == "new\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.md"]


def test_write_text_accepts_str_path(tmp_path):
  outputs.write_text(str(tmp_path / "plain.txt"), "x")
  assert (tmp_path / "plain.txt").read_text() == "x"


def test_write_atomic_mode_follows_umask(tmp_path, umask_022):
  path = tmp_path / "result.csv"
  outputs.write_text(path, "a,b\n")
  assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_old_file(tmp_path):
  path = tmp_path / "result.csv"
  path.write_text("old\n")

  def write_then_fail(temp_path):
    temp_path.write_text("partial")
    raise RuntimeError("writer failed")

  with pytest.raises(RuntimeError, match="writer failed"):
    outputs.write_atomic(path, write_then_fail)
  assert path.read_text() == "old\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


def test_failed_write_after_temp_removed(tmp_path):
  path = tmp_path / "result.csv"

  def remove_then_fail(temp_path):
    temp_path.unlink()
    raise RuntimeError("writer failed")

  with pytest.raises(RuntimeError, match="writer failed"):
    outputs.write_atomic(path, remove_then_fail)
  assert list(tmp_path.iterdir()) == []


def test_write_json_round_trip(tmp_path):
  path = tmp_path / "values.json"
  value = {"b": [1, 2.5, None], "a": "text"}
  outputs.write_json(path, value)
  text = path.read_text()
  assert text.endswith("}\n")
  assert json.loads(text) == value


def test_write_figure_png(tmp_path):
  figure = Figure(figsize=(2, 2))
  figure.subplots().plot([0, 1], [1, 0])
  path = tmp_path / "plot.png"
  outputs.write_figure(path, figure)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert _temp_files(tmp_path) == []


def test_run_info_keys():
  info = outputs.run_info(["python", "-m", "experiments.demo", "--out=a b"], 12.34,
                          {"seed": 3})
  assert list(info) == [*outputs.RUN_INFO_KEYS, "seed"]
  assert info["seed"] == 3


def test_run_info_values():
  info = outputs.run_info(["python", "-m", "experiments.demo", "--out=a b"], 12.34)
  assert info["command"] == "python -m experiments.demo '--out=a b'"
  assert info["wall_time_s"] == 12.3
  assert info["timestamp_utc"].endswith("Z")
  assert info["jax_version"]
  assert info["jax_backend"]
  assert info["devices"]
  assert info["platform"]
  assert info["python_version"]
  json.dumps(info)  # raises TypeError if a value is not JSON-serializable


def test_run_info_rejects_clashing_key():
  with pytest.raises(ValueError, match="wall_time_s"):
    outputs.run_info(["python"], 1.0, {"wall_time_s": 2.0})


def test_git_commit_outside_repository(tmp_path):
  assert outputs.git_commit(tmp_path) == (None, None)


def test_git_commit_in_repository():
  commit, dirty = outputs.git_commit()
  if commit is None:
    pytest.skip("git or the repository's .git folder is not available")
  assert len(commit) == 40
  assert isinstance(dirty, bool)


def test_write_run_info_file(tmp_path):
  info = outputs.run_info(["python", "-m", "experiments.demo"], 1.0, {"rows": 7})
  path = outputs.write_run_info(tmp_path, info)
  assert path == tmp_path / "run_info.json"
  assert json.loads(path.read_text()) == info
  assert _temp_files(tmp_path) == []
