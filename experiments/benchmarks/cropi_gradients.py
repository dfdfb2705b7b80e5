"""Per-example gradient throughput and working memory of cropi on small plt decoders.

Run: ``python -m experiments.benchmarks.cropi_gradients [--reps=5] [--prompts=64]``

Prints, from one process, medians of interleaved timings:

1. Prompts per second of `cropi.per_example_grads` (vmapped chunks under one
   jit) divided by that of a Python loop calling a jitted single-prompt
   gradient once per prompt (pre-sliced inputs), for several chunk sizes and
   three decoder sizes. The target is at least 5x.
2. XLA's compiled working memory (temporary buffers) of the chunked path
   against the chunk size, and for 4x the prompts at a fixed chunk, which
   should not grow. With a fused projector the output is [N, k] too.

Each prompt carries K stored completions and the loss is CROPI's off-policy
surrogate through a plt baseline decoder.
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import cropi
import plt

# name: (width, layers, completions K, sequence tokens, vocabulary)
SIZES = {"tiny": (16, 1, 2, 12, 32), "small": (32, 2, 4, 24, 64), "medium": (64, 2, 8, 48, 256)}


def _policy(width, layers, vocab):
  config = plt.ModelConfig(vocab_size=vocab, d_model=width, num_layers=layers, num_heads=2,
                           num_kv_heads=1, head_dim=width // 2, ffn_dim=2 * width)
  params = plt.init_params(jax.random.key(0), config)

  def log_prob_fn(p, tokens):
    return cropi.sequence_log_probs(plt.forward(p, tokens, config), tokens)

  return params, log_prob_fn


def _batch(num_prompts: int, k: int, seq: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  prompt = seq // 3
  tokens = rng.integers(1, vocab, (num_prompts, k, seq)).astype(np.int32)
  lengths = rng.integers(1, seq - prompt + 1, (num_prompts, k))
  positions = np.arange(seq)[None, None, :]
  mask = ((positions >= prompt) & (positions < prompt + lengths[..., None])).astype(np.float32)
  rewards = rng.integers(0, 2, (num_prompts, k)).astype(np.float32)
  return {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask),
          "behaviour_log_probs": jnp.asarray(-5.0 * mask), "rewards": jnp.asarray(rewards)}


def _median_seconds(fns: dict, reps: int) -> dict:
  for fn in fns.values():
    jax.block_until_ready(fn())  # compile and warm up
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():  # interleaved, so machine noise hits every candidate alike
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def throughput(params, loss, batch, chunks, reps: int) -> dict:
  n = cropi.gradients.batch_size(batch)
  single = jax.jit(lambda p, ex: cropi.flatten(jax.grad(loss)(p, ex)))
  examples = [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(n)]  # sliced before timing

  def loop():
    return [single(params, ex) for ex in examples]

  fns = {"python_loop": loop}
  for chunk in chunks:
    fns[f"chunk_{chunk}"] = (lambda c=chunk: cropi.per_example_grads(loss, params, batch, chunk_size=c))
  seconds = _median_seconds(fns, reps)
  return {name: {"seconds": s, "prompts_per_second": n / s,
                 "speedup_vs_loop": seconds["python_loop"] / s} for name, s in seconds.items()}


def working_memory(params, loss, batch, chunks, projector) -> list:
  rows = []
  bigger = jax.tree.map(lambda x: jnp.concatenate([x] * 4), batch)
  cases = [(batch, c, None) for c in chunks] + [(bigger, chunks[1], None), (batch, chunks[1], projector),
                                               (bigger, chunks[1], projector)]
  for data, chunk, proj in cases:
    compiled = cropi.gradients._chunked_static.lower(params, data, loss_fn=loss, chunk_size=chunk,
                                              projector=proj).compile()
    analysis = compiled.memory_analysis()
    rows.append({"prompts": cropi.gradients.batch_size(data), "chunk": chunk,
                 "projected": proj is not None,
                 "temp_mib": None if analysis is None else analysis.temp_size_in_bytes / 2**20,
                 "output_mib": None if analysis is None else analysis.output_size_in_bytes / 2**20})
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.cropi_gradients",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=5, help="timed repetitions (default: 5)")
  parser.add_argument("--prompts", type=int, default=64, help="prompts per call (default: 64)")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = parser.parse_args(argv)
  if args.reps < 1 or args.prompts < 8:
    parser.exit(2, f"invalid --reps {args.reps} or --prompts {args.prompts}; expected reps >= 1 "
                   "and prompts >= 8\n")

  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.machine()}, "
        f"{os.cpu_count()} cores); {args.prompts} prompts per call; {args.reps} interleaved "
        "repetitions, medians")
  chunks = [8, 16, args.prompts]
  result = {"prompts": args.prompts, "reps": args.reps, "sizes": {}}
  for name, (width, layers, k, seq, vocab) in SIZES.items():
    params, log_prob_fn = _policy(width, layers, vocab)
    loss = cropi.make_prompt_loss(log_prob_fn)
    batch = _batch(args.prompts, k, seq, vocab)
    d = cropi.flat_size(params)
    speed = throughput(params, loss, batch, chunks, args.reps)
    print(f"\n{name} decoder: width {width}, {layers} layers, {d} parameters, K={k} x {seq} tokens")
    for label, row in speed.items():
      print(f"  {label:12s} {row['seconds'] * 1e3:9.1f} ms  {row['prompts_per_second']:9.1f} prompts/s  "
            f"{row['speedup_vs_loop']:6.2f}x the jitted loop")
    best = max(row["speedup_vs_loop"] for label, row in speed.items() if label.startswith("chunk"))
    print(f"  best vmapped speed-up over the jitted loop: {best:.2f}x (target >= 5)")
    result["sizes"][name] = {"parameters": d, "throughput": speed, "best_speedup": best}

  width, layers, k, seq, vocab = SIZES["medium"]
  params, log_prob_fn = _policy(width, layers, vocab)
  loss = cropi.make_prompt_loss(log_prob_fn)
  batch = _batch(args.prompts, k, seq, vocab)
  projector = cropi.make_projector(cropi.flat_size(params), 1024, kind="sparse", seed=0)
  memory = working_memory(params, loss, batch, [1, 4, 16, args.prompts], projector)
  print("\nXLA working memory (temporary buffers) of one compiled call, medium decoder:")
  for row in memory:
    print(f"  prompts {row['prompts']:4d}  chunk {row['chunk']:3d}  projected {str(row['projected']):5s}  "
          f"temp {row['temp_mib']:8.2f} MiB  output {row['output_mib']:7.2f} MiB")
  result["memory"] = memory
  print(json.dumps({name: round(v["best_speedup"], 2) for name, v in result["sizes"].items()}))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
