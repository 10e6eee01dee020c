"""The trainer's per-step host overhead: the whole train command (seqio input pipeline,
host-to-device transfer, metrics, logging, checkpoint at the end) against its own compiled
step run back to back on one batch, in one run.

    python benchmarks/host_overhead.py [--steps 300]

The emb-256 4+4-layer model of train_throughput.py ('global', 8 tasks) on the demo mixture,
batch 8, 128 input / 32 target tokens, packed, logging every 100 steps. The trainer's rate
is measured between its step-100 and last metrics records (compilation excluded).
"""

import argparse
import dataclasses
import json
import os
import tempfile
import time

import jax
import numpy as np

from hyperprompt_jax import input_pipeline, train
from train_throughput import EMB256, compiled_step  # pylint: disable=g-bad-import-order

BATCH, LENGTHS = 8, {'inputs': 128, 'targets': 32}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=300)
  args = parser.parse_args()
  config = dataclasses.replace(EMB256, variant='global')  # the demo vocabulary fits in 2048
  batch = next(iter(input_pipeline.train_dataset('hyperprompt_demo', LENGTHS, BATCH, 0,
                                                 max_segments=8).as_numpy_iterator()))
  compiled, state, _ = compiled_step(config, batch)
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  bare = (time.perf_counter() - start) / args.steps
  with tempfile.TemporaryDirectory() as model_dir:
    train.train(model_dir=model_dir, mixture_or_task_name='hyperprompt_demo',
                task_feature_lengths=LENGTHS, train_steps=args.steps, batch_size=BATCH,
                config=config, log_every_steps=100, save_every_steps=10 ** 9,
                max_segments=8)
    with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
      records = {r['step']: r for r in map(json.loads, f) if 'loss' in r}
  # steps_per_second of each record covers the 100 steps before it
  rates = [records[s]['steps_per_second'] for s in sorted(records) if s > 100]
  trainer = 1.0 / float(np.mean(rates))
  print(f'device: {jax.devices()[0].device_kind}; emb-256 4+4 global, batch {BATCH}, '
        f'{LENGTHS}; {args.steps} steps')
  print(f'compiled step back to back: {bare * 1e3:.1f} ms; train command: {trainer * 1e3:.1f} '
        f'ms per step; host overhead {100 * (trainer - bare) / bare:+.1f}% of the step')


if __name__ == '__main__':
  main()
