"""Shared config pieces and the strict preset parser of every config file."""

import ml_collections
from ml_collections import config_dict

PRESETS = ("smoke", "cpu", "paper")


def parse_preset(arg: str | None, default: str = "cpu") -> str:
  """Return the preset named by `arg` ("smoke", "cpu" or "paper")."""
  preset = default if not arg else arg
  if preset not in PRESETS:
    raise ValueError(f"invalid preset {preset!r}; valid presets: {', '.join(PRESETS)}")
  return preset


def data_config(seq_len: int) -> ml_collections.ConfigDict:
  """Byte-level text of the standard library by default."""
  c = ml_collections.ConfigDict()
  c.source = "stdlib"  # "stdlib" (this interpreter's library) or "files"
  c.paths = ""  # comma-separated text files or folders, for source="files"
  c.tokenizer = "bytes"  # "bytes" (vocabulary 256) or "minilm" (WordPiece, 30522)
  c.seq_len = seq_len  # tokens per training sequence
  c.eval_percent = 5.0  # share of documents held out for evaluation, in percent
  return c


def model_config(**overrides) -> ml_collections.ConfigDict:
  """Fields of plt.ModelConfig; see that class for their meaning."""
  c = ml_collections.ConfigDict()
  c.vocab_size = 256  # byte-level tokens
  c.d_model = 64  # residual width
  c.num_layers = 2  # layers in the shared block stack
  c.num_heads = 4  # query heads
  c.num_kv_heads = 2  # key/value heads (GQA)
  c.head_dim = 16  # per-head width
  c.ffn_dim = 192  # SwiGLU hidden width
  c.rope_base = 10000.0  # RoPE frequency base
  c.tie_embeddings = True  # LM head shares the embedding matrix
  c.init_std = 0.02  # normal init standard deviation
  c.variant = "baseline"  # "baseline", "loop" or "plt"
  c.num_loops = 1  # L
  c.emb_scale = 1.0  # CLP scale of the token embedding
  c.hidden_scale = 1.0  # CLP scale of the carried state
  c.normalize_per_loop = False  # final RMSNorm on the carried state
  c.kv_share = True  # loops >= 2 read loop 1's KV (plt)
  c.gswa = "gated"  # "gated", "fixed_half" or "none"
  c.gate_input = "hidden"  # "hidden" or "query"
  c.window = 64  # G-SWA local window
  c.global_inclusive = True  # global branch includes the query's own position
  c.reset_on_doc_start = True  # zero CLP carry at document starts
  c.dtype = "float32"  # compute dtype: "float32" or "bfloat16"
  c.update(overrides)
  return c


def quant_config() -> ml_collections.ConfigDict:
  """Low-bit GEMMs through lightquant's dot_general (all three GEMMs)."""
  c = ml_collections.ConfigDict()
  c.format = "none"  # a lightquant format name, or "none" for full precision
  c.block_size = config_dict.placeholder(int)  # override the format's block size
  c.scale_rule = config_dict.placeholder(str)  # override: ceil, ocp, floor, round, fp32, nv
  c.clip = config_dict.placeholder(str)  # override: symmetric or asymmetric
  c.scale_arith = config_dict.placeholder(str)  # override: fp32 or bf16
  c.hadamard_size = 0  # random Hadamard rotation size; 0 for none
  return c


def train_config(steps: int, batch_size: int, learning_rate: float) -> ml_collections.ConfigDict:
  """AdamW with warmup and cosine decay (settings of the INT v.s. FP paper, Table 9)."""
  c = ml_collections.ConfigDict()
  c.steps = steps  # optimizer steps
  c.batch_size = batch_size  # sequences per step, across all devices
  c.learning_rate = learning_rate  # peak learning rate
  c.min_lr_ratio = 0.1  # final learning rate as a fraction of the peak
  c.warmup_steps = max(1, steps // 20)  # linear warmup steps
  c.weight_decay = 0.1  # AdamW decoupled weight decay
  c.b1 = 0.9  # Adam beta1
  c.b2 = 0.95  # Adam beta2
  c.grad_clip = 1.0  # global gradient-norm clip
  c.log_every = max(1, steps // 50)  # steps between metric lines
  c.eval_every = max(1, steps // 5)  # steps between evaluations
  c.eval_batches = 4  # batches per evaluation
  c.checkpoint_every = max(1, steps // 5)  # steps between checkpoints
  c.keep_checkpoints = 2  # checkpoints kept on disk
  return c


def add_arms(config: ml_collections.ConfigDict, section: str, arms: dict) -> None:
  """Declare per-arm changes of one config section and the paper's note per arm.

  Args:
    config: the table config, still unlocked.
    section: the config section the arms change ("model" or "quant").
    arms: arm name -> (changes to that section, the paper's reported result).
  """
  config.arm_settings = ml_collections.ConfigDict()  # per-arm changes, shaped like the config
  config.arm_notes = ml_collections.ConfigDict()  # per-arm result reported by the paper
  for name, (changes, note) in arms.items():
    config.arm_settings[name] = ml_collections.ConfigDict({section: changes})
    config.arm_notes[name] = note


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh: data parallel times FSDP."""
  c = ml_collections.ConfigDict()
  c.data = -1  # data-parallel axis size; -1 uses every device not in fsdp
  c.fsdp = 1  # parameter-sharding axis size
  c.multi_host = False  # call jax.distributed.initialize() first
  return c
