"""Greedy decoding speed: tokens/s of cached decoding (models.greedy_decode: the decoder's
hyper-prompts made once per call, with the cache) for each variant against 'mtl', and cached
against uncached (the full decoder re-run over the whole prefix for every token).

    python benchmarks/decode_speed.py [--repeats 5]

The emb-256 4+4-layer model of train_throughput.py, 8 tasks, prompt length 16, batch 16,
128 input tokens, 64 target tokens (no early stop: every row decodes all 64). Variants are
timed alternately; each figure is the best of the repeats.
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from hyperprompt_jax import models
from hyperprompt_jax.network import Transformer
from train_throughput import EMB256  # pylint: disable=g-bad-import-order

BATCH, INPUTS, TARGETS = 16, 128, 64


def uncached_decoder(config, max_length):
  """Greedy decoding without a cache: the whole decoder over the prefix at every step."""
  model = Transformer(config)

  @jax.jit
  def run(params, encoder_input_tokens, task_ids):
    task_ids = task_ids if config.is_conditioned else None
    encoded = model.apply({'params': params}, encoder_input_tokens, enable_dropout=False,
                          task_ids=task_ids, method=Transformer.encode)
    out = jnp.zeros((encoder_input_tokens.shape[0], max_length), jnp.int32)

    def step(i, out):
      inputs = jnp.pad(out[:, :-1], ((0, 0), (1, 0)))
      logits = model.apply({'params': params}, encoded, encoder_input_tokens, inputs,
                           jnp.ones_like(inputs), enable_dropout=False, task_ids=task_ids,
                           method=Transformer.decode)
      return out.at[:, i].set(jnp.argmax(logits[:, i], -1).astype(jnp.int32))
    return jax.lax.fori_loop(0, max_length, step, out)
  return run


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--variants', default='mtl,share,sep,global,prompt_tuning,adapter,hyperformer')
  args = parser.parse_args()
  rng = np.random.RandomState(0)
  tokens = rng.randint(2, EMB256.vocab_size, (BATCH, INPUTS)).astype(np.int32)
  task_ids = rng.randint(0, EMB256.num_tasks, (BATCH,)).astype(np.int32)
  runs = {}
  for variant in args.variants.split(','):
    config = dataclasses.replace(EMB256, variant=variant)
    model = Transformer(config)
    params = models.init_params(model, 0)
    # eos_id=-1: never stops early, so every run decodes all TARGETS tokens.
    cached = lambda p=params, m=model: models.greedy_decode(m, p, tokens, task_ids, TARGETS,
                                                            eos_id=-1)
    uncached_fn = uncached_decoder(config, TARGETS)
    uncached = lambda p=params, f=uncached_fn: f(p, tokens, task_ids)
    jax.block_until_ready(cached())
    jax.block_until_ready(uncached())
    runs[variant] = {'cached': cached, 'uncached': uncached}
  best = {v: {k: float('inf') for k in r} for v, r in runs.items()}
  for _ in range(args.repeats):
    for variant, fns in runs.items():
      for kind, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best[variant][kind] = min(best[variant][kind], time.perf_counter() - start)
  print(f'device: {jax.devices()[0].device_kind}; batch {BATCH}, {INPUTS} input tokens, '
        f'{TARGETS} decoded tokens; best of {args.repeats}')
  print('| variant | cached tokens/s | ÷ mtl | uncached tokens/s | cached ÷ uncached |')
  print('|---|---:|---:|---:|---:|')
  rate = lambda s: BATCH * TARGETS / s
  for variant, b in best.items():
    ratio = best['mtl']['cached'] / b['cached'] if 'mtl' in best else float('nan')  # speed
    print(f'| {variant} | {rate(b["cached"]):.0f} | {ratio:.3f} | {rate(b["uncached"]):.0f} | '
          f'{b["uncached"] / b["cached"]:.2f} |')


if __name__ == '__main__':
  main()
