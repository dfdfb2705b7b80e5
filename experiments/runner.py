"""Dispatch a config to its experiment and write the experiment's report."""

import pathlib
import sys
import time

import ml_collections

from experiments import outputs
from experiments import reports
from experiments import train

EXPERIMENTS = ("lm",)


def prepare(config: ml_collections.ConfigDict):
  """Validate the config and build what it needs; raises ValueError."""
  if config.experiment not in EXPERIMENTS:
    raise ValueError(f"invalid experiment {config.experiment!r}; valid values: {EXPERIMENTS}")
  return train.build(config)


def run(experiment, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train, then write results.md and plots into workdir and print where."""
  start = time.perf_counter()
  final = train.run(config, workdir, experiment)
  out = pathlib.Path(workdir)
  reports.write_lm_report(out, config, final)
  outputs.write_run_info(out, outputs.run_info(sys.argv, time.perf_counter() - start))
  print(f"results: {out / 'results.md'}\nplots: {out / 'loss.png'}")
  return final
