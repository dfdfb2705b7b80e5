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


# Sizes of the CROPI study per preset: task, policy, warm-up and GRPO.
_RLVR_PRESETS = {
    "smoke": dict(pool=30, valid=6, evaluation=6, width=32, layers=1, warmup_steps=150,
                  warmup_batch=16, samples=4, samples_valid=4, steps=6, prompts=4, group=4,
                  stage_steps=2, proj_dim=64),
    "cpu": dict(pool=600, valid=30, evaluation=60, width=64, layers=2, warmup_steps=1200,
                warmup_batch=64, samples=8, samples_valid=32, steps=240, prompts=16, group=8,
                stage_steps=8, proj_dim=1024),
    "paper": dict(pool=6000, valid=300, evaluation=300, width=256, layers=4, warmup_steps=20000,
                  warmup_batch=128, samples=8, samples_valid=32, steps=1000, prompts=128, group=8,
                  stage_steps=100, proj_dim=32768),
}


def rlvr_config(preset: str) -> ml_collections.ConfigDict:
  """The sections shared by the CROPI studies: task, model, warm-up, offline rollouts, GRPO.

  Defaults follow CROPI's released pipeline where it has one ("Data-Efficient
  RLVR via Off-Policy Influence Guidance", arXiv 2510.26491). That means 8 offline samples
  per pool prompt and 32 per validation prompt at temperature 0.5, GRPO groups
  of 8 at temperature 1.0, KL coefficient 0.001, clip 0.2, a constant learning
  rate and 10% of the pool per stage. Sizes shrink to what 2 CPU cores finish.
  """
  s = _RLVR_PRESETS[preset]
  config = ml_collections.ConfigDict()
  config.seed = 0  # seed of the task splits, the warm-up and the offline rollouts
  config.shared_dir = ""  # folder for the warm-up and offline rollouts; empty uses the workdir

  config.task = ml_collections.ConfigDict()
  config.task.families = "add,mul,mod,sort,digitsum"  # problem families in the pool
  # Families with a validation set (influence targets). On this scale GRPO
  # gains on mod and digitsum carry over to held-out problems, while add and
  # mul gains stay on the trained prompts.
  config.task.targeted = "mod,digitsum"
  config.task.difficulties = "1,2,3"  # difficulty levels drawn for every family
  config.task.pool_size = s["pool"]  # training pool size N
  config.task.valid_size = s["valid"]  # validation prompts per targeted family
  config.task.eval_size = s["evaluation"]  # held-out evaluation prompts per family
  config.task.max_new_tokens = 16  # completion budget, end token included
  # A GSM8K-style JSONL file ("question", "answer" ending in "#### <number>") to use
  # instead of generated problems. It fills evaluation, validation, pool and warm-up
  # in that order. Its solutions are long, so raise max_new_tokens with it.
  config.task.jsonl = ""

  config.model = model_config(d_model=s["width"], num_layers=s["layers"], head_dim=16,
                              ffn_dim=3 * s["width"], window=16)

  config.warmup = train_config(steps=s["warmup_steps"], batch_size=s["warmup_batch"],
                               learning_rate=3e-3)
  config.warmup_problems = 20 * s["pool"]  # generated warm-up problems outside every split

  config.offline = ml_collections.ConfigDict()
  config.offline.num_samples = s["samples"]  # K, samples per pool prompt
  config.offline.num_samples_valid = s["samples_valid"]  # K_v, samples per validation prompt
  config.offline.temperature = 0.5  # sampling temperature of the behaviour policy
  config.offline.tempered_behaviour = False  # behaviour log-probs at 0.5 instead of 1.0

  # 3e-4 for a decoder of about 1e5 parameters; 1e-3 collapsed the reward here.
  config.train = train_config(steps=s["steps"], batch_size=s["prompts"], learning_rate=3e-4)
  config.train.min_lr_ratio = 1.0  # constant learning rate after warmup, as in verl's GRPO
  config.train.warmup_steps = 1  # no warmup beyond the first step
  config.train.weight_decay = 0.0  # no decay, so the policy only moves where rewards push it
  config.train.eval_every = max(1, s["steps"] // 24)  # evaluations along the run
  config.train.log_every = config.train.eval_every  # log at every evaluation
  config.train.checkpoint_every = s["stage_steps"]  # stage boundaries, so a resume keeps selections

  config.grpo = ml_collections.ConfigDict()
  config.grpo.group_size = s["group"]  # samples per prompt per step
  config.grpo.temperature = 1.0  # rollout temperature
  config.grpo.kl_coef = 0.001  # k3 KL to the warmed-up policy; 0 skips the reference pass
  config.grpo.clip_low = 0.2  # PPO clip below 1; negative disables clipping
  config.grpo.clip_high = 0.2  # PPO clip above 1 (DAPO's clip-higher when larger)
  config.grpo.aggregation = "seq_mean_token_mean"  # or "token_mean"
  config.grpo.adv_eps = 1e-4  # added to the group std

  config.cropi = ml_collections.ConfigDict()
  config.cropi.select_ratio = 0.1  # fraction of the whole pool selected per stage
  config.cropi.steps_per_stage = s["stage_steps"]  # GRPO steps between reselections
  config.cropi.proj_dim = s["proj_dim"]  # projected dimension k (capped at the parameter count)
  config.cropi.proj_type = "gaussian"  # "gaussian", "rademacher" or "sparse"
  config.cropi.keep_ratio = 1.0  # coordinate dropout keep ratio q
  config.cropi.proj_seed = 0  # seed of the mask, the matrix and the validation draw
  config.cropi.max_valid_prompts = 100  # validation prompts averaged per set
  config.cropi.chunk_size = 16  # prompts per vmapped gradient chunk
  config.cropi.dense_projection = True  # keep R in memory (fast on CPU) instead of regenerating it
  config.mesh = mesh_config()
  return config
