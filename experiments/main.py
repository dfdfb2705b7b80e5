"""Run an experiment from a config file.

  python -m experiments.main --config=experiments/configs/plt_lm.py:cpu \
      --workdir=results/plt_lm [--config.train.steps=100 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
A missing config file, a misspelled preset or override, an invalid value or a
resumed run whose config differs stops before any work with a one-line
message and exit status 2.
"""

import difflib
import importlib.util
import logging as std_logging
import os
import pathlib
import sys

import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file and preset",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder; rerun to resume")

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent / "configs"
# Files in CONFIGS_DIR that have no get_config, so they are not valid --config values.
_CONFIG_HELPERS = ("__init__.py", "common.py")
# The text ml_collections puts before the traceback of an error in get_config.
_GET_CONFIG_ERROR = "Error whilst parsing config file"


def _exit_usage(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_spec(argv: list[str]) -> str | None:
  """Return the value of --config ("path" or "path:preset"), or None if absent."""
  for index, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return None


def _config_files() -> list[str]:
  """List the config files of CONFIGS_DIR, as paths relative to the current folder."""
  paths = sorted(p for p in CONFIGS_DIR.glob("*.py") if p.name not in _CONFIG_HELPERS)
  return [os.path.relpath(p) for p in paths]


def _load_config(spec: str) -> ml_collections.ConfigDict:
  """Load the config of `spec` the way config_flags does, without overrides."""
  path, *preset = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*preset)


def _describe_unknown_key(argv: list[str], config: ml_collections.ConfigDict) -> str | None:
  """Describe the first --config.* override whose key is not in `config`, or return None."""
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    parts = key.split(".")
    node = config
    for depth, part in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and part in node:
        node = node[part]
        continue
      section = ".".join(parts[:depth])
      if not isinstance(node, ml_collections.ConfigDict):
        return f"invalid config override {key!r}: {section} is a value, not a section"
      prefix = f"{section}." if section else ""
      matches = difflib.get_close_matches(part, list(node.keys()), n=1)
      if matches:
        return f"invalid config override {key!r}; did you mean {prefix + matches[0]!r}?"
      valid = ", ".join(prefix + name for name in node.keys())
      return f"invalid config override {key!r}; valid keys: {valid}"
  return None


def _innermost(error: BaseException) -> BaseException:
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return error


def _flag_error_message(argv: list[str], error: Exception) -> str:
  """Turn a flag-parsing error into one line without a traceback."""
  text = str(error.args[0]) if error.args else type(error).__name__
  spec = _config_spec(argv)
  if _GET_CONFIG_ERROR in text:
    # get_config raised. ml_collections re-raises it with the traceback in the
    # message, so report the original exception's message instead.
    text = str(_innermost(error))
  elif isinstance(error, (KeyError, AttributeError)) and spec is not None:
    # ml_collections raises these for an override key that the config lacks.
    try:
      described = _describe_unknown_key(argv, _load_config(spec))
    except (OSError, ImportError, ValueError, TypeError, KeyError, AttributeError):
      described = None
    if described is not None:
      return described
    text = f"invalid config override: {text}"
  else:
    text = f"invalid command line: {text}"
  return " ".join(text.split())


def _parse_flags(argv):
  spec = _config_spec(argv)
  if spec is not None:
    path = spec.split(":", 1)[0]
    if not os.path.isfile(path):
      _exit_usage(f"config file not found: {path!r}; valid config files: "
                  f"{', '.join(_config_files())}")
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as error:
    _exit_usage(_flag_error_message(argv, error))


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    _exit_usage("--config and --workdir are required")
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save at INFO; keep the runner's own lines readable.
  logging.get_absl_handler().python_handler.addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= std_logging.WARNING)
  try:
    experiment = runner.prepare(_CONFIG.value)
    runner.check_workdir(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as error:
    _exit_usage(str(error))
  try:
    runner.run(experiment, _CONFIG.value, _WORKDIR.value)
  except FloatingPointError as error:
    print(f"error: training stopped: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
