"""Dispatch a config to its experiment and write the experiment's report."""

import pathlib
import sys
import time

import ml_collections

from experiments import cropi_probes
from experiments import cropi_study
from experiments import lightquant_direct_cast
from experiments import lightquant_qsnr_sweep
from experiments import outputs
from experiments import reports
from experiments import tables
from experiments import train
from experiments.data import minilm

# "lm": one training run. "lm_table": several arms and a comparison table.
# "qsnr_sweep" and "direct_cast": lightquant studies without training.
EXPERIMENTS = ("lm", "lm_table", "qsnr_sweep", "direct_cast", "cropi_grpo", "cropi_projection",
               "cropi_offpolicy")
CROPI_EXPERIMENTS = ("cropi_grpo", "cropi_projection", "cropi_offpolicy")
# The module of the command line that run_info.json records for every experiment.
MAIN_MODULE = "experiments.main"


def command_line() -> list[str]:
  """Return the command the user ran, as `python -m experiments.main` and its flags."""
  return ["python", "-m", MAIN_MODULE, *sys.argv[1:]]


def _sweep_args(config: ml_collections.ConfigDict, workdir) -> list[str]:
  args = [f"--out={workdir}", f"--seed={config.seed}", f"--formats={config.formats}"]
  if config.quick:
    args.append("--quick")
  if config.experiment == "qsnr_sweep":
    args.append(f"--block_sizes={config.block_sizes}")
    if config.skip_minilm:
      args.append("--skip_minilm")
  if config.model_dir:
    args.append(f"--model_dir={config.model_dir}")
  return args


def _check_study(config: ml_collections.ConfigDict) -> None:
  """Validate a qsnr_sweep or direct_cast config; raises ValueError or FileNotFoundError."""
  if config.seed < 0:
    raise ValueError(f"invalid seed {config.seed}; expected a non-negative int")
  if config.experiment == "qsnr_sweep":
    lightquant_qsnr_sweep.parse_formats(config.formats)
    lightquant_qsnr_sweep.parse_block_sizes(config.block_sizes)
    if config.skip_minilm:
      if config.model_dir:
        raise ValueError("skip_minilm and model_dir exclude each other; set one")
      return
  else:
    lightquant_direct_cast.parse_formats(config.formats)
  try:
    model_dir = minilm.find_model_dir(config.model_dir or None)
    if config.experiment == "direct_cast":
      minilm.load_tokenizer(model_dir)
  except FileNotFoundError as error:
    if config.experiment == "qsnr_sweep":
      raise FileNotFoundError(f"{error}, or set --config.skip_minilm=true") from None
    raise


def prepare(config: ml_collections.ConfigDict):
  """Validate the config and build what it needs; raises ValueError."""
  if config.experiment not in EXPERIMENTS:
    raise ValueError(f"invalid experiment {config.experiment!r}; valid values: {EXPERIMENTS}")
  if config.experiment == "lm_table":
    return tables.prepare(config)
  if config.experiment in ("qsnr_sweep", "direct_cast"):
    _check_study(config)
    return None
  if config.experiment in CROPI_EXPERIMENTS:
    cropi_study.check_config(config)
    return None
  return train.build(config)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raise ValueError if workdir is unusable or resuming its run would change its config."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ValueError(f"invalid --workdir {workdir!r}: it exists and is not a folder")
  if config.experiment in ("qsnr_sweep", "direct_cast") and path == pathlib.Path("."):
    # The studies replace their result files, so they need a folder of their own.
    raise ValueError(f"invalid --workdir {workdir!r}: name a results folder such as "
                     f"results/{config.experiment}")
  if config.experiment == "lm":
    train.check_resume(config, workdir)
  elif config.experiment == "lm_table":
    tables.check_resume(config, workdir)
  elif config.experiment in CROPI_EXPERIMENTS:
    cropi_study.check_resume(config, workdir)


def run(experiment, config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train, then write results.md and plots into workdir and print where."""
  start = time.perf_counter()
  out = pathlib.Path(workdir)
  if config.experiment in ("qsnr_sweep", "direct_cast"):
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_json(out / "config.json", config.to_dict())
    study = lightquant_qsnr_sweep if config.experiment == "qsnr_sweep" else lightquant_direct_cast
    return study.main(_sweep_args(config, out), command=command_line())
  if config.experiment in CROPI_EXPERIMENTS:
    out.mkdir(parents=True, exist_ok=True)
    outputs.write_json(out / "config.json", config.to_dict())
    study = {"cropi_grpo": cropi_study.run, "cropi_projection": cropi_probes.run_projection,
             "cropi_offpolicy": cropi_probes.run_offpolicy}[config.experiment]
    result = study(config, out)
    outputs.write_run_info(out, outputs.run_info(command_line(), time.perf_counter() - start))
    return result
  if config.experiment == "lm_table":
    result = tables.run(experiment, config, out)
    reports.write_table_report(out, config, result)
    plots = out / "eval_loss.png"
  else:
    result = train.run(config, out, experiment).metrics
    reports.write_lm_report(out, config, result)
    plots = out / "loss.png"
  outputs.write_run_info(out, outputs.run_info(command_line(), time.perf_counter() - start))
  print(f"results: {out / 'results.md'}\nplots: {plots}")
  return result
