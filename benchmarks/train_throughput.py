"""Training throughput: examples/s, model FLOP/s (XLA's count for the compiled step) and
that as a fraction of the matmul peak measured in the same run.

    python benchmarks/train_throughput.py [--steps 20]

Configs: the demo model (batch 16, 64 input / 8 target tokens) and a T5.1.1-Small-sized
model (batch 8, 128 / 32 tokens), each for 'global' and 'mtl', with the trainer's own step
(loss, gradients, Adafactor update).
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperprompt_jax import gin_utils, models, param_report, trainer
from hyperprompt_jax.network import Transformer

# Model shapes from the gin files (the one source of sizes); float32 on the CPU.
DEMO = gin_utils.model_config(['models/demo.gin'])
SMALL = param_report.size_config('small', dtype='float32', num_tasks=8)
SETUPS = [('demo', DEMO, 16, 64, 8), ('t5.1.1-small', SMALL, 8, 128, 32)]


def matmul_peak(n=2048, repeats=10):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def measure(config, batch_size, inputs_len, targets_len, steps):
  rng = np.random.RandomState(0)
  targets = rng.randint(2, config.vocab_size, (batch_size, targets_len)).astype(np.int32)
  batch = {'encoder_input_tokens': rng.randint(2, config.vocab_size, (batch_size, inputs_len)
                                               ).astype(np.int32),
           'decoder_target_tokens': targets,
           'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
           'decoder_loss_weights': np.ones_like(targets),
           'task_ids': rng.randint(0, config.num_tasks, (batch_size,)).astype(np.int32)}
  model = Transformer(config)
  params = models.init_params(model, 0)
  optimizer = trainer.make_optimizer(1e-3, params)
  state = {'step': jnp.asarray(0, jnp.int32), 'params': params,
           'opt_state': optimizer.init(params)}
  step = jax.jit(trainer.make_train_step(model, optimizer, config.num_tasks))
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0))
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  return batch_size / seconds, flops / seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  peak = matmul_peak()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; matmul peak '
        f'(2048^2 float32, this run): {peak / 1e9:.1f} GFLOP/s; median of {args.steps} steps')
  print('| config | variant | examples/s | model GFLOP/s | fraction of peak |')
  print('|---|---|---:|---:|---:|')
  for name, config, batch, li, lt in SETUPS:
    for variant in ('global', 'mtl'):
      eps, fps = measure(dataclasses.replace(config, variant=variant), batch, li, lt, args.steps)
      print(f'| {name} | {variant} | {eps:.1f} | {fps / 1e9:.2f} | {fps / peak:.3f} |')


if __name__ == '__main__':
  main()
