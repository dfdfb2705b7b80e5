"""Time and memory of cropi's blockwise random projection against a dense Gaussian matrix.

Run: ``python -m experiments.benchmarks.cropi_projection [--reps=5] [--input_dim=262144]
[--proj_dim=2048] [--num_vectors=32]``

Projects num_vectors float32 vectors of length input_dim to proj_dim with

1. a dense Gaussian matrix R of shape [input_dim, proj_dim], stored in memory
   and applied as ``x @ R / sqrt(proj_dim)`` (the baseline), and
2. `cropi.projection` with the sparse, Gaussian and Rademacher kinds, which
   generate R block by block inside the loop and never store it.

Prints, from one process, the median time per call of each variant from
interleaved repetitions (compilation and warm-up excluded) and its ratio to
the dense baseline. Memory is reported three ways:

* the largest array each variant needs, d * k * 4 bytes for the dense matrix
  and block_size * k * 4 bytes for one generated block;
* the increase of the peak resident set size over a baseline taken after the
  inputs exist, for building the variant, compiling and two calls;
* the same increase for one later call alone, which leaves out one-off
  temporaries of generating the dense matrix and of compiling.

Each variant's memory is measured in its own subprocess. The table ends with
mean ||P x||^2 / ||x||^2, which should be close to 1 for every variant, and
the script ends with one JSON line.
"""

import argparse
import json
import math
import platform
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cropi import projection
from experiments.benchmarks.lightquant_throughput import interleaved_medians

BLOCKWISE_KINDS = ("sparse", "gaussian", "rademacher")
VARIANTS = ("dense",) + tuple(f"blockwise_{kind}" for kind in BLOCKWISE_KINDS)


def _inputs(num_vectors: int, input_dim: int) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(1), (num_vectors, input_dim), jnp.float32)


def _dense_matrix(input_dim: int, proj_dim: int) -> jax.Array:
  generate = jax.jit(lambda key: jax.random.normal(key, (input_dim, proj_dim), jnp.float32))
  return jax.block_until_ready(generate(jax.random.PRNGKey(2)))


def _dense_projection(proj_dim: int):
  scale = np.float32(1.0 / math.sqrt(proj_dim))
  # R is an argument, not a closed-over constant, so XLA does not embed the
  # matrix in the compiled program.
  return jax.jit(lambda x, r: jnp.dot(x, r, precision=jax.lax.Precision.HIGHEST) * scale)


def _blockwise_projection(input_dim: int, proj_dim: int, kind: str):
  projector = projection.make_projector(input_dim, proj_dim, kind=kind, seed=3)
  return projector, jax.jit(lambda x: projector(x))


def _build_variant(name: str, input_dim: int, proj_dim: int):
  """Build one variant and return its projection function and its largest array in bytes."""
  if name == "dense":
    matrix = _dense_matrix(input_dim, proj_dim)
    project = _dense_projection(proj_dim)
    return (lambda x: project(x, matrix)), input_dim * proj_dim * 4
  projector, project = _blockwise_projection(input_dim, proj_dim, name.removeprefix("blockwise_"))
  return project, projector.block_size * proj_dim * 4


def _peak_rss_bytes() -> int:
  """Peak resident set size of this process in bytes.

  Reads VmHWM from /proc on Linux, because a subprocess's ru_maxrss also
  counts the parent's resident memory at the fork, and clear_refs cannot lower
  it. Elsewhere falls back to ru_maxrss.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024  # the value is in kB
  except OSError:
    pass
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
  """Lower the recorded peak RSS to the current RSS, where Linux allows it.

  Without the reset, a peak reached while importing would hide any later
  growth below it.
  """
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def measure_memory(name: str, input_dim: int, proj_dim: int, num_vectors: int) -> dict:
  """Measure the peak RSS increase of one variant over a baseline with the inputs built.

  ``peak_rss_increase_bytes`` covers building the variant (the dense matrix or
  the projector), compiling and two calls. ``call_peak_rss_increase_bytes``
  is the peak of a third call alone, after the peak was reset, so it leaves
  out one-off temporaries of generation and compilation but still counts
  memory that the allocator kept from them.
  """
  x = jax.block_until_ready(_inputs(num_vectors, input_dim))
  jax.block_until_ready(jnp.sum(x))  # start the runtime before the baseline
  peak_reset = _reset_peak_rss()
  baseline = _peak_rss_bytes()
  project, _ = _build_variant(name, input_dim, proj_dim)
  for _ in range(2):
    jax.block_until_ready(project(x))
  total_increase = _peak_rss_bytes() - baseline

  peak_reset = _reset_peak_rss() and peak_reset
  jax.block_until_ready(project(x))
  return {"variant": name, "peak_rss_increase_bytes": total_increase,
          "call_peak_rss_increase_bytes": _peak_rss_bytes() - baseline, "peak_reset": peak_reset}


def _memory_in_subprocess(name: str, args) -> dict:
  command = [sys.executable, "-m", "experiments.benchmarks.cropi_projection",
             f"--memory_variant={name}", f"--input_dim={args.input_dim}",
             f"--proj_dim={args.proj_dim}", f"--num_vectors={args.num_vectors}"]
  result = subprocess.run(command, capture_output=True, text=True, check=True)
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  if not measured["peak_reset"]:
    print(f"NOTE: could not reset the peak RSS for {name}, so its increases count only growth "
          f"above the earlier peak")
  return measured


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.cropi_projection",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=5,
                      help="timed repetitions per variant (default: 5)")
  parser.add_argument("--input_dim", type=int, default=2**18,
                      help="length d of each input vector (default: 2**18)")
  parser.add_argument("--proj_dim", type=int, default=2048,
                      help="length k of each projected vector (default: 2048)")
  parser.add_argument("--num_vectors", type=int, default=32,
                      help="vectors projected per call (default: 32)")
  parser.add_argument("--memory_variant", choices=VARIANTS, default=None,
                      help="measure only the peak RSS increase of this variant and print it as "
                           "JSON; the main run starts one subprocess per variant with this option")
  args = parser.parse_args(argv)
  for option in ("reps", "input_dim", "proj_dim", "num_vectors"):
    if getattr(args, option) < 1:
      parser.exit(2, f"invalid --{option} {getattr(args, option)}; expected a positive integer\n")

  if args.memory_variant:
    print(json.dumps(measure_memory(args.memory_variant, args.input_dim, args.proj_dim,
                                    args.num_vectors)))
    return

  d, k, n = args.input_dim, args.proj_dim, args.num_vectors
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.machine()}), "
        f"d = {d}, k = {k}, {n} vectors, {args.reps} interleaved repetitions, medians")
  x = _inputs(n, d)
  functions, largest = {}, {}
  for name in VARIANTS:
    functions[name], largest[name] = _build_variant(name, d, k)
  medians = interleaved_medians(functions, (x,), args.reps)

  # Sanity check of the scale: E ||P x||^2 / ||x||^2 = 1 for every variant.
  norm_ratio = {}
  squared_norms = jnp.sum(jnp.square(x), axis=1)
  for name, function in functions.items():
    projected = function(x)
    norm_ratio[name] = float(jnp.mean(jnp.sum(jnp.square(projected), axis=1) / squared_norms))
  del functions  # frees the dense matrix before the subprocesses start

  memory = {name: _memory_in_subprocess(name, args) for name in VARIANTS}
  rss_increase = {name: memory[name]["peak_rss_increase_bytes"] for name in VARIANTS}
  call_rss_increase = {name: memory[name]["call_peak_rss_increase_bytes"] for name in VARIANTS}

  mib = 2.0**20
  print("\nMemory in MiB: largest array; peak RSS increase of build, compile and two calls; "
        "peak RSS increase of one later call. Both increases are over a baseline with x built.")
  print(f"{'variant':20s} {'median ms':>10s} {'/ dense':>8s} {'largest':>8s} {'build+calls':>12s} "
        f"{'call':>8s} {'mean |Px|^2/|x|^2':>18s}")
  for name in VARIANTS:
    print(f"{name:20s} {medians[name] * 1e3:10.1f} {medians[name] / medians['dense']:8.2f} "
          f"{largest[name] / mib:8.1f} {rss_increase[name] / mib:12.1f} "
          f"{call_rss_increase[name] / mib:8.1f} {norm_ratio[name]:18.3f}")
  print(json.dumps({
      "input_dim": d, "proj_dim": k, "num_vectors": n, "reps": args.reps,
      "median_seconds": medians,
      "time_ratio_to_dense": {name: medians[name] / medians["dense"] for name in VARIANTS},
      "largest_array_bytes": largest,
      "peak_rss_increase_bytes": rss_increase,
      "call_peak_rss_increase_bytes": call_rss_increase,
      "mean_squared_norm_ratio": norm_ratio,
      "jax": jax.__version__, "machine": platform.machine(),
  }))


if __name__ == "__main__":
  main()
