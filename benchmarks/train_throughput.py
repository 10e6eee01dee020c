"""Training throughput with honest utilisation: MFU from analytic model FLOPs
(hyperprompt_jax/flops.py: matmuls of the model only, 3 x forward), HFU from XLA's count of
the compiled step (everything the hardware does, one-hot embedding included), both divided by
the matmul peak measured in the same run.

    python benchmarks/train_throughput.py [--steps 20]
    python benchmarks/train_throughput.py --setups t5.1.1-small,t5.1.1-base --dtype bfloat16  # GPU

Configs (--setups): the demo model (batch 16, 64 input / 8 target tokens), an emb-256
4+4-layer model with a 2048 vocabulary (batch 8, 128 / 32), T5.1.1-Small's shape (batch 8,
128 / 32) and, for accelerators, T5.1.1-Base's (batch 32, the paper's 512 / 64); --dtype sets
the activations' dtype and the dtype of the matmul that measures the peak;
'global' and 'mtl' with the platform's embedding lookup ('auto'), and 'global' with the other
lookup for comparison. The trainer's own step (loss, gradients, Adafactor update).
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperprompt_jax import flops, gin_utils, models, param_report, trainer
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

# Model shapes from the gin files (the one source of sizes); float32 on the CPU.
DEMO = gin_utils.model_config(['models/demo.gin'])
EMB256 = HyperPromptConfig(vocab_size=2048, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                           num_encoder_layers=4, num_decoder_layers=4,
                           mlp_activations=('gelu', 'linear'), dropout_rate=0.0, num_tasks=8)
SMALL = param_report.size_config('small', dtype='float32', num_tasks=8)
SETUPS = {'demo': (DEMO, 16, 64, 8), 'emb256-4+4': (EMB256, 8, 128, 32),
          't5.1.1-small': (SMALL, 8, 128, 32),
          't5.1.1-base': (param_report.size_config('base', num_tasks=8), 32, 512, 64)}


def matmul_peak(n=2048, repeats=10, dtype='float32'):
  """FLOP/s of an n x n matmul in `dtype` on this device (the best of `repeats`)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn):
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def random_batch(config, batch_size, inputs_len, targets_len, seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, config.vocab_size, (batch_size, targets_len)).astype(np.int32)
  return {'encoder_input_tokens': rng.randint(2, config.vocab_size, (batch_size, inputs_len)
                                              ).astype(np.int32),
          'decoder_target_tokens': targets,
          'decoder_input_tokens': np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          'decoder_loss_weights': np.ones_like(targets),
          'task_ids': rng.randint(0, config.num_tasks, (batch_size,)).astype(np.int32)}


def compiled_step(config, batch):
  """(compiled train step, initial state, XLA FLOPs per step)."""
  model = Transformer(config)
  params = models.init_params(model, 0)
  optimizer = trainer.make_optimizer(1e-3, params)
  state = {'step': jnp.asarray(0, jnp.int32), 'params': params,
           'opt_state': optimizer.init(params)}
  step = jax.jit(trainer.make_train_step(model, optimizer, config.num_tasks))
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, state, float(cost.get('flops', 0.0))


def step_seconds(compiled, state, batch, steps):
  """Median seconds per step (after one warm-up step)."""
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--setups', default='demo,emb256-4+4,t5.1.1-small',
                      help=f'comma-separated, of {", ".join(SETUPS)}')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  args = parser.parse_args()
  names = args.setups.split(',')
  unknown = [n for n in names if n not in SETUPS]
  if unknown:
    parser.error(f'unknown setups {unknown}: choose from {", ".join(SETUPS)}')
  n = 8192 if jax.default_backend() == 'gpu' else 2048
  peak = matmul_peak(n, dtype=args.dtype)
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}; matmul peak '
        f'({n}^2 {args.dtype}, this run): {peak / 1e9:.1f} GFLOP/s; median of {args.steps} '
        'steps')
  print('| config | variant | embedding | step ms | examples/s | model GFLOP/step | '
        'XLA GFLOP/step | MFU | HFU |')
  print('|---|---|---|---:|---:|---:|---:|---:|---:|')
  for name in names:
    base, batch_size, li, lt = SETUPS[name]
    base = dataclasses.replace(base, dtype=args.dtype)
    default = 'one_hot' if jax.default_backend() == 'tpu' else 'gather'
    other = 'gather' if default == 'one_hot' else 'one_hot'
    for variant, lookup in (('global', default), ('mtl', default), ('global', other)):
      config = dataclasses.replace(base, variant=variant, embedding_lookup=lookup)
      batch = random_batch(config, batch_size, li, lt)
      compiled, state, xla_flops = compiled_step(config, batch)
      seconds = step_seconds(compiled, state, batch, args.steps)
      model_flops = flops.train_step_flops(config, batch_size, li, lt)
      print(f'| {name} | {variant} | {lookup} | {seconds * 1e3:.1f} | '
            f'{batch_size / seconds:.1f} | {model_flops / 1e9:.2f} | {xla_flops / 1e9:.2f} | '
            f'{model_flops / seconds / peak:.3f} | {xla_flops / seconds / peak:.3f} |')


if __name__ == '__main__':
  main()
