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

Sweep a subset, for example the 8-bit pair at blocks of 32 and per channel:
  --config.formats=mxint8,mxfp8 --config.block_sizes=32,-1
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
  # Comma-separated formats to sweep; the default is the paper's 8. The INT-vs-FP,
  # crest and theory tables and the plots need all 8 and the default block
  # sizes, and other grids get only the mean QSNR tables.
  config.formats = "mxint8,mxfp8,mxint6,mxfp6,mxint4,mxfp4,nvint4,nvfp4"
  config.block_sizes = "-1,256,128,64,32,16"  # comma-separated; -1 is per-channel
  config.lock()
  return config
