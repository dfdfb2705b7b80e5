"""The shared training loop of every language-model experiment.

Order of work: build and validate everything the config names (model, formats,
data, mesh) before touching devices. Then create the train state from
`jax.eval_shape` and its shardings, and restore the newest checkpoint if any.
Last, loop with one jitted, donated step, logging, evaluating and
checkpointing at the configured intervals.
"""

import dataclasses
import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import lightquant
import plt
from lightquant import formats as lq_formats
from experiments import checkpointing
from experiments import metrics as metrics_lib
from experiments import outputs
from experiments import sharding
from experiments.data import corpus


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array
  # Raw uint32 data of the run's root key. Step-level randomness derives
  # from it as fold_in(key, step), so the checkpointed root key and step
  # reproduce every later key after a resume, even if config.seed changes.
  rng: jax.Array


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


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay to min_lr_ratio and norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
      decay_steps=max(train.steps, train.warmup_steps + 1),
      end_value=train.learning_rate * train.min_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(train.grad_clip),
      optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay))


def loss_fn(params, batch, model: plt.ModelConfig, dot_general):
  """Mean next-token cross-entropy over targets inside their document."""
  logits = plt.forward(params, batch["inputs"], model, batch["segment_ids"], dot_general)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  mask = batch["mask"].astype(jnp.float32)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _global_norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def make_train_step(exp: Experiment, optimizer):
  """One optimizer step; returns the new state and scalar metrics."""

  def step(state: TrainState, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, exp.model, exp.dot_general)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/grad_norm": _global_norm(grads),
               "train/param_norm": _global_norm(params), "train/update_norm": _global_norm(updates)}
    return TrainState(params, opt_state, state.step + 1, state.rng), metrics

  return step


def evaluate(params, exp: Experiment, eval_step, config, mesh) -> dict[str, float]:
  """Mean eval loss over a fixed, deterministic set of eval batches."""
  data = exp.eval_data
  batch_size = min(config.train.batch_size, len(data))
  losses = []
  for i in range(config.train.eval_batches):
    indices = (np.arange(batch_size) + i * batch_size) % len(data)
    batch = sharding.shard_batch(data.batch(indices), mesh)
    losses.append(float(eval_step(params, batch)))
  loss = float(np.mean(losses))
  return {"eval/loss": loss, "eval/bits_per_byte": loss / np.log(2)}


class RunResult(NamedTuple):
  metrics: dict[str, float]  # the last logged metrics
  params: Any  # the final parameters


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
        exp: Experiment | None = None) -> RunResult:
  """Train (or resume) the run in `workdir`; return its last metrics and params."""
  exp = build(config) if exp is None else exp
  workdir = pathlib.Path(workdir)
  check_resume(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  is_main = jax.process_index() == 0
  if is_main:
    outputs.write_json(workdir / "config.json", config.to_dict())

  optimizer = make_optimizer(config.train)

  def init(key):
    params = plt.init_params(key, exp.model)  # the same key as before the rng field existed
    run_key = jax.random.fold_in(key, 1)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                      jax.random.key_data(run_key))

  key = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, key)
  state_sharding = sharding.state_shardings(abstract, mesh)
  state = jax.jit(init, out_shardings=state_sharding)(key)

  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
  log = metrics_lib.MetricsLog(workdir / "metrics.jsonl")
  start_step, data_step, last = 0, 0, {}
  latest = checkpointer.latest_step()
  if latest is not None:
    state, extra = checkpointer.restore(latest, checkpointing.abstract_like(state))
    start_step, data_step, last = latest, extra["data_step"], extra["last_metrics"]
    logging.info("Resumed from step %d in %s", latest, workdir)
  if is_main:
    log.truncate(start_step)
  tensorboard = metrics_lib.TensorBoardWriter(workdir / "tensorboard") if is_main else None

  iterator = corpus.BatchIterator(exp.train_data, config.train.batch_size, config.seed, data_step)
  train_step = jax.jit(make_train_step(exp, optimizer), donate_argnums=0,
                       out_shardings=(state_sharding, None))
  eval_step = jax.jit(lambda p, b: loss_fn(p, b, exp.model, exp.dot_general))
  tokens_per_step = config.train.batch_size * config.data.seq_len

  bar = tqdm(total=config.train.steps, initial=start_step, desc="train", unit="step",
             disable=not is_main, mininterval=1.0)
  try:
    tick = time.perf_counter()
    for step in range(start_step + 1, config.train.steps + 1):
      batch = sharding.shard_batch(iterator.next(), mesh)
      state, step_metrics = train_step(state, batch)
      loss = float(step_metrics["train/loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss {loss} at step {step}; last finite metrics: {last}")
      if step % config.train.log_every == 0 or step == config.train.steps:
        values = {k: float(v) for k, v in step_metrics.items()}
        elapsed = time.perf_counter() - tick
        values["train/tokens_per_second"] = tokens_per_step * config.train.log_every / max(elapsed, 1e-9)
        tick = time.perf_counter()
        if step % config.train.eval_every == 0 or step == config.train.steps:
          values.update(evaluate(state.params, exp, eval_step, config, mesh))
        last = {k: v for k, v in values.items() if k != "train/tokens_per_second"}
        if is_main:
          log.write(step, values)
          tensorboard.write(step, values)
        bar.set_postfix(loss=f"{values['train/loss']:.3f}",
                        tok_s=f"{values['train/tokens_per_second']:.0f}")
      bar.update(1)
      if step % config.train.checkpoint_every == 0 or step == config.train.steps:
        checkpointer.save(step, state, {"data_step": iterator.step, "last_metrics": last})
  finally:
    bar.close()
  checkpointer.close()
  if tensorboard is not None:
    tensorboard.close()
  return RunResult(last, state.params)
