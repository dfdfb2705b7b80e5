"""INT8 clipping-range ablation: BF16 or UE8M0 scales, [-128, 127] or [-127, 127].

Command:
  python -m experiments.main --config=experiments/configs/lightquant_clipping.py:cpu \
      --workdir=results/lightquant_clipping [--config.arms=bf16,ue8m0_sym_b32]

A small-scale version of Table 10 of "INT v.s. FP" (Chen et al., arXiv
2510.25602): INT8 training with the scale computed in BF16 (s = amax / 127
rounded to BF16, with x / s rounded to BF16 as PyTorch does for BF16 tensors)
or as a UE8M0 power of two rounded up, with the asymmetric range [-128, 127]
or the symmetric [-127, 127], per channel and in blocks of 256, 128, 64 and
32. The paper (145M model, 20B tokens) finds the asymmetric range with BF16
scales worse than the symmetric one, and worst relative to it at block 32
(3.1354 vs 3.1251), because -128 gives the gradients a negative bias.
"""

import ml_collections

from experiments.configs import common

# Paper Table 10 final losses: (granularity) -> (bf16 asym, bf16 sym, ue8m0 asym, ue8m0 sym).
PAPER = {
    -1: (3.2544, 3.2560, 3.3602, 3.4307),
    256: (3.1340, 3.1307, 3.1628, 3.1574),
    128: (3.1309, 3.1289, 3.1353, 3.1326),
    64: (3.1312, 3.1269, 3.1312, 3.1288),
    32: (3.1354, 3.1251, 3.1299, 3.1269),
}


def _arms() -> dict:
  arms = {"bf16": ({"format": "none"}, "reference: no quantization")}
  for block, losses in PAPER.items():
    label = "pc" if block == -1 else f"b{block}"
    for column, (scale, clip) in enumerate(
        (("bf16", "asymmetric"), ("bf16", "symmetric"), ("ue8m0", "asymmetric"),
         ("ue8m0", "symmetric"))):
      # Both scale kinds are computed in BF16 arithmetic, as the paper's
      # PyTorch training did; the UE8M0 exponent then comes from the
      # BF16-rounded amax / 127.
      quant = {"format": "mxint8", "block_size": block, "clip": clip,
               "scale_rule": "fp32" if scale == "bf16" else "ceil", "scale_arith": "bf16"}
      name = f"{scale}_{'asym' if clip == 'asymmetric' else 'sym'}_{label}"
      arms[name] = (quant, f"paper loss {losses[column]}")
  return arms


ARMS = _arms()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "lm_table"  # several arms and one comparison table
  config.title = "INT8 clipping range and scale computation"  # heading of results.md
  config.seed = 0  # replaced by each entry of seeds
  # Comma-separated arms to run, in table order. The smoke preset runs only the
  # reference and the asymmetric and symmetric BF16-scale arms at block 32, so
  # that it finishes in about 20 s on 2 cores.
  config.arms = "bf16,bf16_asym_b32,bf16_sym_b32" if preset == "smoke" else ",".join(ARMS)
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
    # Width 256 keeps block 256 distinct from per-channel in the forward GEMMs.
    # One layer and 200 steps keep 21 arms x 2 seeds near 20 minutes.
    config.model = common.model_config(d_model=256, num_layers=1, ffn_dim=768, num_heads=4,
                                       head_dim=64, dtype="bfloat16")
    config.train = common.train_config(steps=200, batch_size=8, learning_rate=3e-3)
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
