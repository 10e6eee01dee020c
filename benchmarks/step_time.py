"""Train-step time of every variant divided by 'mtl''s, measured alternately in one run,
next to the analytic model FLOPs divided by 'mtl''s (hyperprompt_jax/flops.py): where the
time ratio exceeds the FLOP ratio, the conditioning costs more than its arithmetic.

    python benchmarks/step_time.py [--repeats 30] [--shape small]

A small T5.1.1-shaped config (d 256, 4+4 layers, 8 tasks), prompt_length 16, 128 input and
32 target tokens, batch 32 (--batch to change it: the hypernetworks' cost is per step, so it
weighs more on smaller batches); --shape small: T5.1.1-Small's dimensions (d 512, 8+8
layers, 6 heads, mlp 1024, vocabulary 32128), batch 8.
Each repeat times one jitted step (loss, gradients, Adafactor update) per variant in turn;
the figure is the minimum over repeats, so that background noise cancels out.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperprompt_jax import flops
from hyperprompt_jax.config import VARIANTS, HyperPromptConfig
from hyperprompt_jax.network import Transformer


def make_step(config, batch):
  model = Transformer(config)
  task_ids = None if config.variant == 'mtl' else batch['task_ids']
  params = model.init(jax.random.PRNGKey(0), batch['inputs'], batch['dec_inputs'],
                      batch['targets'], enable_dropout=False)['params']
  optimizer = optax.adafactor(1e-3)
  opt_state = optimizer.init(params)

  def loss_fn(p):
    logits = model.apply({'params': p}, batch['inputs'], batch['dec_inputs'], batch['targets'],
                         enable_dropout=True, task_ids=task_ids)  # as the trainer (rate 0)
    onehot = jax.nn.one_hot(batch['targets'], config.vocab_size)
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1))

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = optimizer.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  state = [params, opt_state]

  def run():
    state[0], state[1], loss = step(*state)
    loss.block_until_ready()
  run()  # compile
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=30)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--batch', type=int, default=None)
  parser.add_argument('--shape', choices=('emb256', 'small'), default='emb256')
  args = parser.parse_args()
  rng = np.random.RandomState(0)
  if args.shape == 'small':
    shape = dict(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                 num_encoder_layers=8, num_decoder_layers=8)
  else:
    shape = dict(vocab_size=1024, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                 num_encoder_layers=4, num_decoder_layers=4)
  b = args.batch or (8 if args.shape == 'small' else 32)
  batch = {'inputs': jnp.asarray(rng.randint(1, 1024, (b, 128)), jnp.int32),
           'targets': jnp.asarray(rng.randint(1, 1024, (b, 32)), jnp.int32),
           'task_ids': jnp.asarray(rng.randint(0, 8, (b,)), jnp.int32)}
  batch['dec_inputs'] = jnp.pad(batch['targets'][:, :-1], ((0, 0), (1, 0)))
  steps, model_flops = {}, {}
  for variant in args.variants.split(','):
    config = HyperPromptConfig(**shape, mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
                               variant=variant, num_tasks=8, prompt_length=16)
    steps[variant] = make_step(config, batch)
    model_flops[variant] = flops.train_step_flops(config, b, 128, 32)
  best = {v: float('inf') for v in steps}
  for _ in range(args.repeats):
    for variant, run in steps.items():
      start = time.perf_counter()
      run()
      best[variant] = min(best[variant], time.perf_counter() - start)
  print(f'device: {jax.devices()[0].device_kind}; shape {args.shape}, batch {b}; min of '
        f'{args.repeats} alternating repeats')
  print('| variant | step ms | time / mtl | model FLOPs / mtl | excess |')
  print('|---|---:|---:|---:|---:|')
  for variant, seconds in best.items():
    time_ratio = seconds / best['mtl']
    flop_ratio = model_flops[variant] / model_flops['mtl']
    print(f'| {variant} | {1000 * seconds:.1f} | {time_ratio:.3f} | {flop_ratio:.3f} | '
          f'{time_ratio - flop_ratio:+.3f} |')


if __name__ == '__main__':
  main()
