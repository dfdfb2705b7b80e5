"""Direct-cast inference of a real pretrained model in the 8 MX/NV formats.

Command:
  python -m experiments.main --config=experiments/configs/lightquant_direct_cast.py \
      --workdir=results/direct_cast

A CPU-sized version of Table 3 and Figure 4 of "INT v.s. FP" (Chen et al.,
arXiv 2510.25602) on all-MiniLM-L6-v2: every linear layer's forward GEMM in
each format, with and without Hadamard rotation, scored by the QSNR of the
final hidden states and the cosine of the sentence embeddings on 64
sentences, plus the tensor-level QSNR and crest factors of every weight and
input activation. Expected: MXINT8 beats MXFP8, FP wins the 6- and 4-bit MX
pairs, and NVINT4 overtakes NVFP4 only with rotation. About 40 s on 2 cores.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = common.parse_preset(arg)
  config = ml_collections.ConfigDict()
  config.experiment = "direct_cast"  # lightquant direct cast of MiniLM
  config.seed = 0  # seed of the random Hadamard signs
  config.quick = preset == "smoke"  # fewer sentences and tensors
  config.model_dir = ""  # MiniLM folder; empty uses the installed package
  # Comma-separated formats to run. The INT-vs-FP, crest and paper tables and the
  # plot need all 8, so a subset gets only the table of every format.
  config.formats = "mxint8,mxfp8,mxint6,mxfp6,mxint4,mxfp4,nvint4,nvfp4"
  config.lock()
  return config
