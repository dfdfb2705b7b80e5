"""Low-bit training: BF16 against MXFP8 and MXINT8 in all three GEMMs of every layer.

Command:
  python -m experiments.main --config=experiments/configs/lightquant_training.py:cpu \
      --workdir=results/lightquant_training

A small-scale version of Table 4 of "INT v.s. FP: A Comprehensive Study of
Fine-Grained Low-bit Quantization Formats" (Chen et al., arXiv 2510.25602):
the plt baseline decoder (Llama-style) trained on byte-level standard-library
text with the same data and steps in every arm; each linear layer's forward,
input-gradient and weight-gradient GEMMs run through lightquant's dot_general
with each operand blocked along its own contraction axis. The paper reports
final losses 2.6727 (BF16), 2.6767 (MXFP8) and 2.6758 (MXINT8) at 1B
parameters and 100B tokens: MXINT8 within 0.003 of BF16 and about 0.001
below MXFP8.
"""

import ml_collections

from experiments.configs import common

ARMS = {
    "bf16": ({"format": "none"}, "reference (paper 1B: 2.6727)"),
    "mxfp8": ({"format": "mxfp8"}, "+0.0040 over BF16 at 1B, +0.0027 at 3B"),
    "mxint8": ({"format": "mxint8"}, "+0.0031 over BF16 at 1B, +0.0018 at 3B; below MXFP8"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "lm_table"  # several arms and one comparison table
  config.title = "Low-bit training: BF16, MXFP8, MXINT8"  # heading of results.md
  config.seed = 0  # replaced by each entry of seeds
  config.arms = ",".join(ARMS)  # comma-separated arms to run, in table order
  config.reference_arm = "bf16"  # the arm other rows are compared with
  config.seeds = "0" if preset == "smoke" else "0,1"  # every arm runs once per seed
  if preset == "smoke":
    config.data = common.data_config(seq_len=32)
    config.model = common.model_config(d_model=32, num_layers=1, head_dim=8, ffn_dim=64,
                                       window=8, dtype="bfloat16")
    config.train = common.train_config(steps=4, batch_size=4, learning_rate=3e-3)
    config.train.eval_batches = 1
  elif preset == "cpu":
    config.data = common.data_config(seq_len=128)
    config.model = common.model_config(dtype="bfloat16")
    config.train = common.train_config(steps=600, batch_size=16, learning_rate=3e-3)
    config.train.eval_batches = 16
  else:
    config.data = common.data_config(seq_len=2048)
    config.model = common.model_config(d_model=1024, num_layers=12, num_heads=16,
                                       num_kv_heads=4, head_dim=64, ffn_dim=3072,
                                       dtype="bfloat16")
    config.train = common.train_config(steps=38000, batch_size=256, learning_rate=1e-3)
    config.train.warmup_steps = 500
  config.quant = common.quant_config()
  config.mesh = common.mesh_config()
  common.add_arms(config, "quant", ARMS)
  config.lock()
  return config
