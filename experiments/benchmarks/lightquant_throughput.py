"""Throughput of lightquant's fake quantization and of a quantized training step.

Run: ``python -m experiments.benchmarks.lightquant_throughput [--reps=9]``

Prints, from one process, medians of interleaved timings:

1. For every registered format, the throughput of ``fake_quant`` on a
   4096 x 4096 float32 array divided by that of the elementwise pass
   ``x * 2 + 1`` on the same array (1.0 means as fast as one read and one
   write). Target on CPU: at least 0.5 for the MX formats.
2. The step time of a small MLP training step (forward, backward, AdamW) with
   MXINT8 in all three GEMMs of every layer, divided by the unquantized step.
   Target: at most 1.5.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lightquant as lq


def _time_once(fn, *args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def interleaved_medians(fns: dict, args: tuple, reps: int) -> dict:
  """Median seconds per call of each function, timed in alternation.

  Alternating the candidates within every repetition spreads machine noise
  evenly over them, so the ratios are steadier than back-to-back loops.
  """
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # compile and warm up
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      times[name].append(_time_once(fn, *args))
  return {name: statistics.median(t) for name, t in times.items()}


def fake_quant_ratios(reps: int) -> dict:
  x = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
  fns = {"x*2+1": jax.jit(lambda v: v * 2 + 1)}
  for name in lq.FORMAT_NAMES:
    fns[name] = jax.jit(lambda v, name=name: lq.fake_quant(v, name, -1))
  medians = interleaved_medians(fns, (x,), reps)
  base = medians.pop("x*2+1")
  return {name: base / t for name, t in medians.items()}, base


def _mlp_step(config, width: int, depth: int, batch: int):
  dot_general = lq.make_dot_general(config)
  dims = (((1,), (0,)), ((), ()))
  keys = jax.random.split(jax.random.key(1), depth + 1)
  params = [jax.random.normal(k, (width, width)) / np.sqrt(width) for k in keys[:depth]]
  x = jax.random.normal(keys[-1], (batch, width))
  y = jnp.roll(x, 1, axis=1)
  opt = optax.adamw(1e-3)

  def loss(p, x, y):
    h = x
    for w in p:
      h = jax.nn.gelu(dot_general(h, w, dims))
    return jnp.mean((h - y) ** 2)

  # Data are arguments, not closed-over constants, so XLA cannot fold the
  # activations' quantization at compile time.
  @jax.jit
  def step(p, s, x, y):
    value, grads = jax.value_and_grad(loss)(p, x, y)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  state = opt.init(params)
  return lambda: step(params, state, x, y)


def training_step_ratio(reps: int, width: int = 1024, depth: int = 4, batch: int = 2048) -> tuple:
  fns = {
      "bf16_free": _mlp_step(lq.DotGeneralConfig(), width, depth, batch),
      "mxint8": _mlp_step(lq.DotGeneralConfig.uniform("mxint8"), width, depth, batch),
  }
  medians = interleaved_medians(fns, (), reps)
  return medians["mxint8"] / medians["bf16_free"], medians


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.lightquant_throughput",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=9,
                      help="timed repetitions per candidate (default: 9)")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args(argv)
  if args.reps < 1:
    parser.exit(2, f"invalid --reps {args.reps}; expected a positive integer\n")

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
        f"{args.reps} interleaved repetitions, medians")
  ratios, base = fake_quant_ratios(args.reps)
  print(f"\nfake_quant throughput / (x*2+1) throughput, 4096x4096 float32 (x*2+1: {base * 1e3:.1f} ms)")
  for name, ratio in ratios.items():
    target = "  (target >= 0.5)" if name.startswith("mx") else ""
    print(f"  {name:18s} {ratio:5.2f}{target}")
  step_ratio, medians = training_step_ratio(args.reps)
  print("\nMLP training step, 4 layers 1024x1024, batch 2048:")
  print(f"  unquantized {medians['bf16_free'] * 1e3:.1f} ms, MXINT8 in all GEMMs {medians['mxint8'] * 1e3:.1f} ms, "
        f"ratio {step_ratio:.2f} (target <= 1.5)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"fake_quant_ratio": ratios, "train_step_ratio": step_ratio,
                 "argv": sys.argv, "jax": jax.__version__}, f, indent=1)


if __name__ == "__main__":
  main()
