"""The one training loop every experiment plugs into: state, resume, step, log, eval, checkpoint.

An experiment supplies a `Task` with five parts: parameter initialisation, the
loss, the batch of a step (from a data iterator, or sampled from the current
policy), evaluation, and the JSON state of its data position. The loop owns
everything else.

Resume order:
1. Build the abstract train state with `jax.eval_shape` and its shardings.
2. Restore the newest checkpoint into those shardings.
3. Hand the task its saved data state, and restore the last logged metrics.
4. Drop metric lines logged after that step, then continue at step + 1.
"""

import pathlib
import time
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from experiments import checkpointing
from experiments import metrics as metrics_lib
from experiments import outputs
from experiments import sharding


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array
  # Raw uint32 data of the run's root key. Step-level randomness derives
  # from it as fold_in(key, step), so the checkpointed root key and step
  # reproduce every later key after a resume, even if config.seed changes.
  rng: jax.Array


class Task(Protocol):
  """The experiment-specific parts of a training run."""

  unit: str  # what units_per_step counts, for the throughput metric ("tokens", "prompts")
  units_per_step: int

  def init_params(self, key: jax.Array) -> Any:
    """Initial parameters from the run's seed key."""

  def loss(self, params, batch: dict, key: jax.Array) -> tuple[jax.Array, dict]:
    """Scalar loss and extra scalar metrics; traced once under jit."""

  def next_batch(self, step: int, params, key: jax.Array) -> tuple[dict, dict]:
    """Return the arrays of `step` (leading axis: batch) and host-side metrics of making them."""

  def evaluate(self, params) -> dict[str, float]:
    """Evaluation metrics, keys prefixed "eval/"."""

  def data_state(self) -> dict:
    """JSON-serialisable data position, saved with every checkpoint."""

  def restore(self, data_state: dict) -> None:
    """Continue from a saved data position."""


class RunResult(NamedTuple):
  metrics: dict[str, float]  # the last logged metrics
  params: Any  # the final parameters


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay to min_lr_ratio and norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
      decay_steps=max(train.steps, train.warmup_steps + 1),
      end_value=train.learning_rate * train.min_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(train.grad_clip),
      optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay))


def make_train_step(loss_fn, optimizer):
  """One optimizer step on ``loss_fn(params, batch, key)``; returns the new state and metrics."""

  def step(state: TrainState, batch, key):
    (loss, extra), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
               "train/param_norm": optax.global_norm(params),
               "train/update_norm": optax.global_norm(updates), **extra}
    return TrainState(params, opt_state, state.step + 1, state.rng), metrics

  return step


def root_key(state: TrainState) -> jax.Array:
  """Rebuild the run's root key on one device from the state's raw key data.

  The key data may be sharded like any other leaf of the state, and a key
  array cannot be, so it goes through the host. It never changes during a run.
  """
  return jax.random.wrap_key_data(jnp.asarray(np.asarray(jax.device_get(state.rng))))


def run(task: Task, config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> RunResult:
  """Train (or resume) `task` in `workdir` with config.train, config.mesh and config.seed.

  The caller checks beforehand that a resumed workdir belongs to this config.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  is_main = jax.process_index() == 0
  if is_main:
    outputs.write_json(workdir / "config.json", config.to_dict())
  train = config.train
  optimizer = make_optimizer(train)

  def init(key):
    params = task.init_params(key)
    run_key = jax.random.fold_in(key, 1)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                      jax.random.key_data(run_key))

  key = jax.random.key(config.seed)
  abstract = jax.eval_shape(init, key)
  state_sharding = sharding.state_shardings(abstract, mesh)
  state = jax.jit(init, out_shardings=state_sharding)(key)

  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", train.keep_checkpoints)
  log = metrics_lib.MetricsLog(workdir / "metrics.jsonl")
  start_step, last = 0, {}
  latest = checkpointer.latest_step()
  if latest is not None:
    state, extra = checkpointer.restore(latest, checkpointing.abstract_like(state))
    start_step, last = latest, extra["last_metrics"]
    task.restore(extra)
    logging.info("Resumed from step %d in %s", latest, workdir)
  if is_main:
    log.truncate(start_step)
  tensorboard = metrics_lib.TensorBoardWriter(workdir / "tensorboard") if is_main else None

  train_step = jax.jit(make_train_step(task.loss, optimizer), donate_argnums=0,
                       out_shardings=(state_sharding, None))
  rate_key = f"train/{task.unit}_per_second"
  root = root_key(state)

  bar = tqdm(total=train.steps, initial=start_step, desc="train", unit="step",
             disable=not is_main, mininterval=1.0)
  try:
    tick = time.perf_counter()
    for step in range(start_step + 1, train.steps + 1):
      key = jax.random.fold_in(root, step)
      batch, host_metrics = task.next_batch(step, state.params, key)
      state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh), key)
      loss = float(step_metrics["train/loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss {loss} at step {step}; last finite metrics: {last}")
      if step % train.log_every == 0 or step == train.steps:
        values = {k: float(v) for k, v in step_metrics.items()}
        values.update(host_metrics)
        elapsed = time.perf_counter() - tick
        values[rate_key] = task.units_per_step * train.log_every / max(elapsed, 1e-9)
        tick = time.perf_counter()
        if step % train.eval_every == 0 or step == train.steps:
          values.update(task.evaluate(state.params))
        last = {k: v for k, v in values.items() if k != rate_key}
        if is_main:
          log.write(step, values)
          tensorboard.write(step, values)
        bar.set_postfix(loss=f"{values['train/loss']:.3f}", rate=f"{values[rate_key]:.0f}")
      bar.update(1)
      if step % train.checkpoint_every == 0 or step == train.steps:
        checkpointer.save(step, state, {**task.data_state(), "last_metrics": last})
  finally:
    bar.close()
  checkpointer.close()
  if tensorboard is not None:
    tensorboard.close()
  return RunResult(last, state.params)
