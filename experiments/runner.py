"""Dispatch a config to its experiment and write the experiment's report."""

import pathlib
import sys
import time

import ml_collections

from experiments import lightquant_direct_cast
from experiments import lightquant_qsnr_sweep
from experiments import outputs
from experiments import reports
from experiments import tables
from experiments import train

# "lm": one training run. "lm_table": several arms and a comparison table.
# "qsnr_sweep" and "direct_cast": lightquant studies without training.
EXPERIMENTS = ("lm", "lm_table", "qsnr_sweep", "direct_cast")


def _sweep_args(config: ml_collections.ConfigDict, workdir) -> list[str]:
  args = [f"--out={workdir}", f"--seed={config.seed}"]
  if config.quick:
    args.append("--quick")
  if config.experiment == "qsnr_sweep" and config.skip_minilm:
    args.append("--skip_minilm")
  if config.model_dir:
    args.append(f"--model_dir={config.model_dir}")
  return args


def prepare(config: ml_collections.ConfigDict):
  """Validate the config and build what it needs; raises ValueError."""
  if config.experiment not in EXPERIMENTS:
    raise ValueError(f"invalid experiment {config.experiment!r}; valid values: {EXPERIMENTS}")
  if config.experiment == "lm_table":
    return tables.prepare(config)
  if config.experiment in ("qsnr_sweep", "direct_cast"):
    if config.seed < 0:
      raise ValueError(f"invalid seed {config.seed}; expected a non-negative int")
    return None
  return train.build(config)


def run(experiment, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train, then write results.md and plots into workdir and print where."""
  start = time.perf_counter()
  out = pathlib.Path(workdir)
  if config.experiment == "qsnr_sweep":
    return lightquant_qsnr_sweep.main(_sweep_args(config, out))
  if config.experiment == "direct_cast":
    return lightquant_direct_cast.main(_sweep_args(config, out))
  if config.experiment == "lm_table":
    result = tables.run(experiment, config, out)
    reports.write_table_report(out, config, result)
    plots = out / "eval_loss.png"
  else:
    result = train.run(config, out, experiment).metrics
    reports.write_lm_report(out, config, result)
    plots = out / "loss.png"
  outputs.write_run_info(out, outputs.run_info(sys.argv, time.perf_counter() - start))
  print(f"results: {out / 'results.md'}\nplots: {plots}")
  return result
