"""lightquant: bit-exact MX/NV low-bit formats, QSNR theory and a quantized dot_general.

Reimplements "INT v.s. FP: A Comprehensive Study of Fine-Grained Low-bit
Quantization Formats" (Chen et al., arXiv 2510.25602) in JAX.
"""

from lightquant import hadamard
from lightquant import theory
from lightquant.formats import ELEMENTS
from lightquant.formats import ElementFormat
from lightquant.formats import Format
from lightquant.formats import FORMAT_NAMES
from lightquant.formats import get_format
from lightquant.formats import PAPER_PAIRS
from lightquant.formats import PER_CHANNEL
from lightquant.formats import PER_TENSOR
from lightquant.formats import SCALE_RULES
from lightquant.metrics import crest_factor
from lightquant.metrics import qsnr
from lightquant.quantization import dequantize
from lightquant.quantization import fake_quant
from lightquant.quantization import quantize
from lightquant.quantization import QuantizedArray
from lightquant.dot_general import DotGeneralConfig
from lightquant.dot_general import GemmConfig
from lightquant.dot_general import make_dot_general
