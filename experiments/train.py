"""Language-model training: config validation, data, the LM loss and its task for the shared loop.

Order of work: build and validate everything the config names (model, formats,
data, mesh) before touching devices, and check that a resumed workdir belongs
to this config. Then `experiments.loop.run` creates the train state, restores
the newest checkpoint if any, and steps, logs, evaluates and checkpoints.
"""

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import lightquant
import plt
from lightquant import formats as lq_formats
from experiments import loop
from experiments import sharding
from experiments.data import corpus


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything built from a config before any device work."""

  model: plt.ModelConfig
  dot_general: Any
  train_data: corpus.PackedSequences
  eval_data: corpus.PackedSequences


def build_model_config(config: ml_collections.ConfigDict) -> plt.ModelConfig:
  """Build the plt.ModelConfig of config.model; invalid values raise ValueError."""
  model = plt.ModelConfig(**config.model.to_dict())
  if model.window > config.data.seq_len and model.has_local_branch:
    raise ValueError(
        f"invalid model.window {model.window}: larger than data.seq_len {config.data.seq_len}")
  return model


# Knobs of config.quant that change the chosen format, each with the value that
# leaves it unset.
QUANT_KNOBS = {"block_size": None, "scale_rule": None, "clip": None, "scale_arith": None,
               "hadamard_size": 0}


def check_quant_knobs(quant: ml_collections.ConfigDict) -> None:
  """Validate the knobs of config.quant whatever the format; raises ValueError.

  A knob that is set while quant.format is "none" is an error, because full
  precision has no format for it to change.
  """
  block_size = quant.block_size
  if block_size is not None and block_size <= 0 and block_size not in (
      lightquant.PER_CHANNEL, lightquant.PER_TENSOR):
    raise ValueError(f"invalid quant.block_size {block_size}; valid values: a positive int, "
                     f"{lightquant.PER_CHANNEL} (per-channel) or {lightquant.PER_TENSOR} "
                     "(per-tensor)")
  for name, choices in (("scale_rule", lq_formats.SCALE_RULES), ("clip", lq_formats.CLIP_STYLES),
                        ("scale_arith", lq_formats.SCALE_ARITHMETIC)):
    if quant[name] is not None and quant[name] not in choices:
      raise ValueError(f"invalid quant.{name} {quant[name]!r}; valid values: {', '.join(choices)}")
  size = quant.hadamard_size
  if size < 0 or size & (size - 1):
    raise ValueError(f"invalid quant.hadamard_size {size}; expected 0 (no rotation) or a power "
                     "of two")
  if quant.format == "none":
    for name, unset in QUANT_KNOBS.items():
      if quant[name] != unset:
        raise ValueError(f"quant.{name}={quant[name]!r} needs a quant.format, but quant.format "
                         "is 'none' (full precision); set quant.format, such as mxint8, or "
                         f"drop the quant.{name} override")


def build_dot_general(quant: ml_collections.ConfigDict, seed: int):
  """lightquant's dot_general for config.quant, or None for full precision."""
  check_quant_knobs(quant)
  if quant.format == "none":
    return None
  fmt = lightquant.get_format(quant.format)
  changes = {name: quant[name] for name in ("block_size", "scale_rule", "clip", "scale_arith")
             if quant[name] is not None}
  fmt = dataclasses.replace(fmt, **changes)
  size = quant.hadamard_size or None
  config = lightquant.DotGeneralConfig.uniform(fmt, hadamard_size=size)
  key = jax.random.key(seed) if size else None
  return lightquant.make_dot_general(config, key=key)


def build_data(data: ml_collections.ConfigDict, seed: int):
  """Train and eval packed sequences of byte-level tokens."""
  if data.source == "stdlib":
    files = corpus.stdlib_files()
  elif data.source == "files":
    if not data.paths:
      raise ValueError("data.source='files' needs data.paths (comma-separated files or folders)")
    files = corpus.user_files(data.paths.split(","))
  else:
    raise ValueError(f"invalid data.source {data.source!r}; valid values: 'stdlib', 'files'")
  if not 0 < data.eval_percent < 100:
    raise ValueError(f"invalid data.eval_percent {data.eval_percent}; expected a value in (0, 100)")
  split = {True: [], False: []}
  for path in files:
    split[corpus.is_eval_document(path.as_posix(), data.eval_percent, seed)].append(path)
  if not split[True] or not split[False]:
    raise ValueError(f"the {len(files)} documents give an empty train or eval split; "
                     "add files or change data.eval_percent")

  if data.tokenizer == "bytes":
    def tokenize(texts):
      return [corpus.byte_tokens(t) for t in texts]
  elif data.tokenizer == "minilm":
    wordpiece = corpus.wordpiece_tokenizer()

    def tokenize(texts):
      return corpus.wordpiece_tokens(texts, wordpiece)
  else:
    raise ValueError(f"invalid data.tokenizer {data.tokenizer!r}; valid values: 'bytes', 'minilm'")

  def pack(paths):
    tokens, doc_ids = corpus.token_stream(tokenize([p.read_bytes() for p in paths]))
    return corpus.PackedSequences(tokens, doc_ids, data.seq_len)

  return pack(split[False]), pack(split[True])


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Validate the config and build the experiment; raises ValueError on bad values."""
  model = build_model_config(config)
  needed = corpus.WORDPIECE_VOCAB_SIZE if config.data.tokenizer == "minilm" else corpus.BYTE_VOCAB_SIZE
  if model.vocab_size < needed:
    raise ValueError(f"invalid model.vocab_size {model.vocab_size}; data.tokenizer "
                     f"{config.data.tokenizer!r} needs at least {needed}")
  for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
               "eval_batches"):
    if config.train[name] < 1:
      raise ValueError(f"invalid train.{name} {config.train[name]}; expected a positive int")
  dot_general = build_dot_general(config.quant, config.seed)
  train_data, eval_data = build_data(config.data, config.seed)
  return Experiment(model, dot_general, train_data, eval_data)


# Keys that may change when a run resumes in its workdir: the loop's schedule
# and logging (to extend a run) and the device mesh (to resume on other
# devices). The keys of table configs that choose, label and declare the arms
# may change too, because an arm's run depends on them only through the
# sections that arm_config changes, and those are compared. Every other key
# defines the run.
RESUMABLE_KEYS = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.eval_batches", "mesh",
                  "arms", "seeds", "title", "reference_arm", "arm_notes", "arm_settings")
_MISSING = object()


def flatten(tree: dict, prefix: str = "") -> dict:
  """Flatten nested dicts to {"a.b.c": value}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def first_config_difference(old: dict, new: dict,
                            resumable: tuple[str, ...] = RESUMABLE_KEYS) -> tuple | None:
  """Return (key, old value, new value) of the first differing key, or None.

  Keys equal to an entry of `resumable` or below it are skipped. A key that
  only one config has compares as different, with _MISSING as the other value.
  """
  old_flat, new_flat = flatten(old), flatten(new)
  for key in [*new_flat, *(k for k in old_flat if k not in new_flat)]:
    if any(key == r or key.startswith(f"{r}.") for r in resumable):
      continue
    before, after = old_flat.get(key, _MISSING), new_flat.get(key, _MISSING)
    if before != after:
      return key, before, after
  return None


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Return whether workdir/checkpoints contains a saved step (a folder named by its number)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _show(value) -> str:
  return "(missing)" if value is _MISSING else json.dumps(value)


def check_resume(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Raise ValueError if workdir contains checkpoints of a run with another config.

  Only the RESUMABLE_KEYS may differ from the config.json of the run. A
  workdir without config.json or without checkpoints passes, because there is
  no run to resume.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not path.is_file() or not has_checkpoint(workdir):
    return
  try:
    old = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ValueError(f"cannot read {path} of the run to resume: {error}; "
                     "pick a new --workdir") from None
  # The JSON round trip makes tuples lists, as in the stored config.json.
  new = json.loads(json.dumps(config.to_dict()))
  difference = first_config_difference(old, new)
  if difference is not None:
    key, before, after = difference
    raise ValueError(
        f"{key} is {_show(after)}, but the run in {workdir} was started with {_show(before)}; "
        "a resumed run may change only train.steps, the train log, eval and checkpoint "
        "intervals, train.keep_checkpoints, train.eval_batches and mesh, so pick a new "
        "--workdir for this config")


def loss_fn(params, batch, model: plt.ModelConfig, dot_general):
  """Mean next-token cross-entropy over targets inside their document."""
  logits = plt.forward(params, batch["inputs"], model, batch["segment_ids"], dot_general)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  mask = batch["mask"].astype(jnp.float32)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class LmTask:
  """Next-token prediction on packed sequences, as a `loop.Task`.

  The data state is the batch iterator's step, saved as "data_step".
  """

  unit = "tokens"

  def __init__(self, exp: Experiment, config: ml_collections.ConfigDict):
    self.exp, self.config = exp, config
    self.units_per_step = config.train.batch_size * config.data.seq_len
    self.iterator = corpus.BatchIterator(exp.train_data, config.train.batch_size, config.seed)
    self.mesh = sharding.make_mesh(config.mesh)  # built once, reused by every evaluation
    self._eval_step = jax.jit(lambda p, b: loss_fn(p, b, exp.model, exp.dot_general))

  def init_params(self, key):
    return plt.init_params(key, self.exp.model)

  def loss(self, params, batch, key):
    del key  # next-token prediction draws no randomness
    return loss_fn(params, batch, self.exp.model, self.exp.dot_general), {}

  def next_batch(self, step, params, key):
    del step, params, key
    return self.iterator.next(), {}

  def evaluate(self, params) -> dict[str, float]:
    """Mean eval loss over a fixed, deterministic set of eval batches."""
    data, train = self.exp.eval_data, self.config.train
    batch_size = min(train.batch_size, len(data))
    losses = []
    for i in range(train.eval_batches):
      indices = (np.arange(batch_size) + i * batch_size) % len(data)
      batch = sharding.shard_batch(data.batch(indices), self.mesh)
      losses.append(float(self._eval_step(params, batch)))
    loss = float(np.mean(losses))
    return {"eval/loss": loss, "eval/bits_per_byte": loss / np.log(2)}

  def data_state(self) -> dict:
    return {"data_step": self.iterator.step}

  def restore(self, data_state: dict) -> None:
    self.iterator.step = data_state["data_step"]


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
        exp: Experiment | None = None) -> loop.RunResult:
  """Train (or resume) the language model run in `workdir`; return its last metrics and params."""
  exp = build(config) if exp is None else exp
  check_resume(config, workdir)
  return loop.run(LmTask(exp, config), config, workdir)
