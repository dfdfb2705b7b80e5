"""QSNR of the MX/NV INT and FP formats by block size and Hadamard rotation.

Command (the README's default experiment):
  python -m experiments.main --config=experiments/configs/lightquant_qsnr.py \
      --workdir=results/qsnr_sweep

Sweeps the 8 formats of "INT v.s. FP" (Chen et al., arXiv 2510.25602) over
per-channel and blocks of 256, 128, 64, 32 and 16, with and without a 32-point
random Hadamard rotation, on Gaussian and Student-t tensors and the 36 linear
weight matrices of all-MiniLM-L6-v2. Expected: MXINT8 about 41.6 dB against
MXFP8 31.5 dB on MiniLM weights, MXFP6 and MXFP4 ahead of their INT
counterparts, NVINT4 ahead of NVFP4 on most tensors. About a minute on 2 cores.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "qsnr_sweep"  # the lightquant tensor-level QSNR sweep
  config.seed = 0  # seed of the synthetic tensors and the Hadamard signs
  config.quick = preset == "smoke"  # small tensors and a MiniLM subset
  config.skip_minilm = False  # sweep only the synthetic tensors
  config.model_dir = ""  # MiniLM folder; empty uses the installed package
  config.lock()
  return config
