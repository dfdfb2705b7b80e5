"""Run an experiment from a config file.

  python -m experiments.main --config=experiments/configs/plt_lm.py:cpu \
      --workdir=results/plt_lm [--config.train.steps=100 ...]

Rerunning the same command resumes from the newest checkpoint in --workdir.
A misspelled override or an invalid value stops before any work with a
one-line message and exit status 2.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file and preset",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder; rerun to resume")


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError) as error:
    # KeyError and AttributeError messages of ml_collections are quoted and
    # span lines ("'stpes'\nDid you mean ..."); fold them into one line.
    text = str(error.args[0]) if error.args else type(error).__name__
    text = text.replace("\\n", " ").replace("\\'", "").replace("'", "")
    print(f"error: invalid config override: {' '.join(text.split())}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  if _CONFIG.value is None or not _WORKDIR.value:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.INFO)
  # Orbax logs every save at INFO; keep the runner's own lines readable.
  logging.get_absl_handler().python_handler.addFilter(
      lambda record: "orbax" not in record.pathname or record.levelno >= std_logging.WARNING)
  try:
    experiment = runner.prepare(_CONFIG.value)
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  try:
    runner.run(experiment, _CONFIG.value, _WORKDIR.value)
  except FloatingPointError as error:
    print(f"error: training stopped: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
