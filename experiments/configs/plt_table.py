"""Baseline, vanilla loop and PLT variants with the paper's ablations, one table.

Command:
  python -m experiments.main --config=experiments/configs/plt_table.py:cpu \
      --workdir=results/plt_table [--config.arms=baseline,plt2]

Reproduces, at a small scale, the comparisons of "Parallel Loop Transformer for
Efficient Test-Time Computation Scaling" (Wu et al., arXiv 2510.24824): the
same data, steps and block for the non-looped baseline, the vanilla loop-2,
PLT-2 and PLT-3, and the ablations CLP with per-loop full KV caches, KV sharing
without G-SWA, a fixed 0.5 gate, and windows 16 and 32 (PLT-2 uses 64).
Writes results.md with eval loss, decode latency and KV bytes per arm.
"""

import ml_collections

from experiments.configs import common

# Arm name -> (changes to config.model, the paper's reported direction).
ARMS = {
    "baseline": ({}, "reference: the non-looped model"),
    "loop2": ({"variant": "loop", "num_loops": 2},
              "lower loss than the baseline; 2x KV and about 2x latency"),
    "plt2": ({"variant": "plt", "num_loops": 2},
             "about the loss of loop2; KV 1 + w/S; latency close to the baseline"),
    "plt3": ({"variant": "plt", "num_loops": 3},
             "a small gain over plt2 in the paper (40.8 vs 39.7 average accuracy)"),
    "plt2_full_kv": ({"variant": "plt", "num_loops": 2, "kv_share": False, "gswa": "none"},
                     "about plt2 or slightly better; KV 2x"),
    "plt2_no_gswa": ({"variant": "plt", "num_loops": 2, "gswa": "none"},
                     "worse than plt2: sharing loop 1's KV alone costs accuracy"),
    "plt2_fixed_gate": ({"variant": "plt", "num_loops": 2, "gswa": "fixed_half"},
                        "between plt2_no_gswa and plt2"),
    "plt2_w16": ({"variant": "plt", "num_loops": 2, "window": 16},
                 "window sweep: gains saturate with w; the paper uses 64"),
    "plt2_w32": ({"variant": "plt", "num_loops": 2, "window": 32},
                 "window sweep: gains saturate with w; the paper uses 64"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "lm_table"  # several arms and one comparison table
  config.title = "PLT variants and ablations"  # heading of results.md
  config.seed = 0  # seed of init and data order, shared by all arms
  # Comma-separated arms to run, in table order. The smoke preset runs only the
  # baseline, loop2 and plt2, so that it finishes in about 20 s on 2 cores.
  config.arms = "baseline,loop2,plt2" if preset == "smoke" else ",".join(ARMS)
  config.reference_arm = "baseline"  # the arm other rows are compared with
  config.seeds = "0"  # comma-separated seeds; every arm runs once per seed
  if preset == "smoke":
    config.data = common.data_config(seq_len=32)
    config.model = common.model_config(d_model=32, num_layers=1, head_dim=8, ffn_dim=64, window=8)
    config.train = common.train_config(steps=4, batch_size=4, learning_rate=3e-3)
    config.train.eval_batches = 1
  elif preset == "cpu":
    config.data = common.data_config(seq_len=128)
    config.model = common.model_config(window=64)
    config.train = common.train_config(steps=600, batch_size=16, learning_rate=3e-3)
    config.train.eval_batches = 16
  else:
    config.data = common.data_config(seq_len=2048)
    config.model = common.model_config(d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
                                       head_dim=64, ffn_dim=2048, window=64)
    config.train = common.train_config(steps=20000, batch_size=256, learning_rate=1e-3)
  config.quant = common.quant_config()
  config.mesh = common.mesh_config()
  common.add_arms(config, "model", ARMS)
  if preset == "smoke":
    for name in ("plt2_w16", "plt2_w32"):
      config.arm_settings[name].model.window = 4
  config.lock()
  return config
