"""plt: the Parallel Loop Transformer and its baselines in JAX.

Reimplements "Parallel Loop Transformer for Efficient Test-Time Computation
Scaling" (Wu et al., arXiv 2510.24824): a looped transformer with cross-loop
parallelism, loop 1's KV cache shared by later loops, gated sliding-window
attention, and one-pass decoding. With ``variant="baseline"`` it is a plain
Llama-style decoder.
"""

from plt.config import ModelConfig
from plt.decode import decode_step
from plt.decode import decode_step_jit
from plt.decode import generate
from plt.decode import prefill
from plt.decode import sample
from plt.kv_cache import DecodeState
from plt.kv_cache import init_decode_state
from plt.kv_cache import kv_cache_bytes
from plt.model import forward
from plt.model import forward_with_outputs
from plt.model import init_params
from plt.nn import LoopedLM
