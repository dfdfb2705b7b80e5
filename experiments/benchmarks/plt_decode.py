"""Per-token decode latency and KV-cache size of baseline, vanilla loop and PLT.

Run: ``python -m experiments.benchmarks.plt_decode [--steps=100] [--out=DIR]``

All models share one block (the same ModelConfig fields apart from the
variant and loop count). For each batch size, the jitted decode steps of every
model are timed in alternation after a prefill and a warm-up. The table reports
the median over `--steps` steps, without the prefill. KV bytes come from the
real decode-state arrays (`plt.kv_cache_bytes`).

Targets on CPU: PLT-2 at most 1.3x the baseline and at most 0.65x the vanilla
loop-2 at batch 1 and 4; PLT-2 KV bytes within a factor 1 + w/S of the
baseline, vanilla loop-2 exactly 2x.
"""

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import plt
from experiments import outputs

# Wide enough that reading the weights dominates a decode step at small batch,
# the memory-bound regime where PLT's single pass pays off.
BLOCK = plt.ModelConfig(vocab_size=256, d_model=1024, num_layers=4, num_heads=16,
                        num_kv_heads=4, head_dim=64, ffn_dim=4096, window=64)


def model_configs(loops=(2, 3)) -> dict[str, plt.ModelConfig]:
  """Build the compared models: baseline, vanilla loop-L and PLT-L on one block."""
  configs = {"baseline": dataclasses.replace(BLOCK, variant="baseline", num_loops=1)}
  for n in loops:
    configs[f"loop-{n}"] = dataclasses.replace(BLOCK, variant="loop", num_loops=n)
    configs[f"plt-{n}"] = dataclasses.replace(BLOCK, variant="plt", num_loops=n)
  return configs


def time_decode(configs, batch: int, context: int, prompt: int, steps: int) -> dict:
  """Median seconds per decode step of each model at one batch size."""
  runs = {}
  for name, config in configs.items():
    params = plt.init_params(jax.random.key(0), config)
    tokens = jax.random.randint(jax.random.key(1), (batch, prompt), 0, config.vocab_size)
    _, state = plt.prefill(params, tokens, config, context)
    token = tokens[:, -1]
    for _ in range(3):  # compile and warm up
      logits, state = plt.decode_step_jit(params, token, state, config)
    jax.block_until_ready(logits)
    runs[name] = [params, token, state, config, []]
  for _ in range(steps):
    for run in runs.values():
      params, token, state, config, times = run
      start = time.perf_counter()
      logits, state = plt.decode_step_jit(params, token, state, config)
      jax.block_until_ready(logits)
      times.append(time.perf_counter() - start)
      run[2] = state
  return {name: statistics.median(run[4]) for name, run in runs.items()}


def _plot(latency: dict, batches, path: pathlib.Path) -> None:
  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for name in next(iter(latency.values())):
    ax.plot(batches, [latency[b][name] * 1e3 for b in batches], marker="o", label=name)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size")
  ax.set_ylabel("decode latency per token (ms, median)")
  ax.set_title(f"d={BLOCK.d_model}, {BLOCK.num_layers} layers, window {BLOCK.window}")
  ax.legend()
  outputs.write_figure(path, fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.benchmarks.plt_decode",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100, help="timed decode steps per model")
  parser.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes")
  parser.add_argument("--context", type=int, default=512, help="cache capacity for timing")
  parser.add_argument("--out", default="results/plt_decode", help="folder for the table and plot")
  args = parser.parse_args(argv)
  try:
    batches = [int(b) for b in args.batches.split(",")]
  except ValueError:
    parser.exit(2, f"invalid --batches {args.batches!r}; expected integers such as 1,4,16\n")
  if args.steps < 1 or min(batches) < 1 or args.context < 2:
    parser.exit(2, "invalid --steps, --batches or --context; expected positive values\n")

  configs = model_configs()
  start = time.perf_counter()
  latency = {b: time_decode(configs, b, args.context, args.context // 2, args.steps)
             for b in batches}
  lines = [f"# PLT decode benchmark\n",
           f"jax {jax.__version__} on {jax.devices()[0].platform}; block d={BLOCK.d_model}, "
           f"{BLOCK.num_layers} layers, ffn {BLOCK.ffn_dim}, window {BLOCK.window}; "
           f"context {args.context}, prompt {args.context // 2}, median of {args.steps} steps.\n",
           "| model | " + " | ".join(f"batch {b} (ms)" for b in batches) + " | "
           + " | ".join(f"ratio to baseline, batch {b}" for b in batches) + " |",
           "|---" * (1 + 2 * len(batches)) + "|"]
  for name in configs:
    row = [f"{latency[b][name] * 1e3:.2f}" for b in batches]
    row += [f"{latency[b][name] / latency[b]['baseline']:.2f}" for b in batches]
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  lines.append("\nPLT-L / vanilla loop-L latency: " + ", ".join(
      f"L={n} batch {b}: {latency[b][f'plt-{n}'] / latency[b][f'loop-{n}']:.2f}"
      for n in (2, 3) for b in batches))

  lines.append("\n| model | KV bytes, context 512 | ratio | KV bytes, context 4096 | ratio |")
  lines.append("|---|---|---|---|---|")
  for name, config in configs.items():
    cells = []
    for context in (512, 4096):
      size = plt.kv_cache_bytes(config, 1, context)
      base = plt.kv_cache_bytes(configs["baseline"], 1, context)
      cells += [f"{size}", f"{size / base:.4f}"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append(f"\nPLT-2 bound 1 + w/S: {1 + BLOCK.window / 512:.4f} at 512, "
               f"{1 + BLOCK.window / 4096:.4f} at 4096.")
  table = "\n".join(lines) + "\n"

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  outputs.write_text(out / "results.md", table)
  _plot(latency, batches, out / "latency_vs_batch.png")
  outputs.write_run_info(out, outputs.run_info(sys.argv, time.perf_counter() - start))
  print(table)
  print(f"table: {out / 'results.md'}\nplot: {out / 'latency_vs_batch.png'}")


if __name__ == "__main__":
  main()
