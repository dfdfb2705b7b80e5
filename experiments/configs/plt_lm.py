"""Train one decoder LM (baseline, vanilla loop or PLT) on byte-level text.

Command:
  python -m experiments.main --config=experiments/configs/plt_lm.py:cpu \
      --workdir=results/plt_lm --config.model.variant=plt --config.model.num_loops=2

Presets: smoke (a few steps, for tests), cpu (minutes on 2 cores), paper
(a larger model and schedule for accelerators). Expected result at the cpu
preset: eval loss falls below 2.5 nats per byte on the standard library.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "lm"  # which experiment the runner runs
  config.seed = 0  # seed of init, data order and dropout-free sampling
  if preset == "smoke":
    config.data = common.data_config(seq_len=32)
    config.model = common.model_config(d_model=32, num_layers=1, head_dim=8, ffn_dim=64, window=8)
    config.train = common.train_config(steps=6, batch_size=4, learning_rate=3e-3)
    config.train.eval_batches = 1
  elif preset == "cpu":
    config.data = common.data_config(seq_len=128)
    config.model = common.model_config()
    config.train = common.train_config(steps=600, batch_size=16, learning_rate=3e-3)
  else:
    config.data = common.data_config(seq_len=1024)
    config.model = common.model_config(d_model=768, num_layers=12, num_heads=12, num_kv_heads=4,
                                       head_dim=64, ffn_dim=2048)
    config.train = common.train_config(steps=20000, batch_size=256, learning_rate=1e-3)
  config.quant = common.quant_config()
  config.mesh = common.mesh_config()
  config.lock()
  return config
