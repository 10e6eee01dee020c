"""Our trainer against t5x's, on the same network, data and shapes: both train commands run
here one after the other, and each one's own steps-per-second figures are compared (ours from
MODEL_DIR/metrics.jsonl, t5x's `timing/steps_per_second` from its TensorBoard summaries), after
the first logging period (compilation, warm-up) of each.

    python benchmarks/vs_t5x.py --t5x_root=<t5x source folder> [--python=<python with t5x>]

Default shapes: T5.1.1-Small's dimensions ('global', float32 on the CPU, dropout off), the
offline demo mixture (HYPERPROMPT_VOCAB=demo; num_tasks from the mixture's task ids),
batch 8, 128 input / 32 target tokens, packed, 60 steps logged every 20. Neither run
evaluates or checkpoints before its end. t5x is not on PyPI (see README "With t5x");
--python names an interpreter where `import t5x` works.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def common_bindings(args):
  import hyperprompt_tasks  # pylint: disable=import-outside-toplevel
  num_tasks = max(hyperprompt_tasks.task_ids_of(args.mixture)) + 1  # the mixture's own table
  return [f'MIXTURE_OR_TASK_NAME = "{args.mixture}"',
          f"TASK_FEATURE_LENGTHS = {{'inputs': {args.inputs}, 'targets': {args.targets}}}",
          f'TRAIN_STEPS = {args.steps}', f'BATCH_SIZE = {args.batch}',
          'INITIAL_CHECKPOINT_PATH = None', f'network.HyperPromptConfig.num_tasks = {num_tasks}',
          'network.HyperPromptConfig.dtype = "float32"',
          'network.HyperPromptConfig.dropout_rate = 0.0']


def ours_command(args, model_dir):
  flags = [f'--gin_file={f}' for f in ('runs/finetune.gin', args.model, args.variant)]
  bindings = common_bindings(args) + [
      f'MODEL_DIR = "{model_dir}"', f'train.train.log_every_steps = {args.log_every}',
      f'train.train.save_every_steps = {10 * args.steps}']
  return [sys.executable, '-m', 'hyperprompt_jax.train', *flags,
          *[f'--gin_bindings={b}' for b in bindings]]


def t5x_command(args, model_dir):
  flags = [f'--gin_search_paths={os.path.join(REPO, "gin")},{args.t5x_root}']
  flags += [f'--gin_file={f}' for f in (args.model, 't5x/hyperprompt.gin', args.variant,
                                        't5x/configs/runs/finetune.gin')]
  bindings = common_bindings(args) + [
      f'MODEL_DIR = "{model_dir}"', 'DROPOUT_RATE = 0.0', 'USE_CACHED_TASKS = False',
      f'train.stats_period = {args.log_every}', 'train.train_eval_dataset_cfg = None',
      'train.infer_eval_dataset_cfg = None',
      f'utils.SaveCheckpointConfig.period = {10 * args.steps}',
      'utils.RestoreCheckpointConfig.path = []', 'partitioning.PjitPartitioner.num_partitions = 1']
  return [args.python, '-m', 't5x.train', *flags, *[f'--gin_bindings={b}' for b in bindings]]


def run(command, env, name):
  start = time.perf_counter()
  out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
  if out.returncode:
    sys.exit(f'error: the {name} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}')
  return time.perf_counter() - start


def ours_rates(model_dir, log_every):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [r['steps_per_second'] for r in records if 'loss' in r and r['step'] > log_every]


def t5x_rates(model_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  rates = {}
  for path in glob.glob(os.path.join(model_dir, 'train', 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'timing/steps_per_second':
          rates[event.step] = float(tf.make_ndarray(value.tensor))
  steps = sorted(rates)
  return [rates[s] for s in steps[1:]]  # the first period includes warm-up


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--t5x_root', required=True, help="t5x's source folder (holds t5x/)")
  parser.add_argument('--python', default=sys.executable, help='an interpreter with t5x')
  parser.add_argument('--model', default='models/small.gin')
  parser.add_argument('--variant', default='variants/global.gin')
  parser.add_argument('--mixture', default='hyperprompt_demo')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--inputs', type=int, default=128)
  parser.add_argument('--targets', type=int, default=32)
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--log_every', type=int, default=20)
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.t5x_root, 't5x')):
    sys.exit(f'error: --t5x_root={args.t5x_root} has no t5x/ folder: pass the root of a '
             'google-research/t5x checkout.')
  env = dict(os.environ, HYPERPROMPT_VOCAB=os.environ.get('HYPERPROMPT_VOCAB', 'demo'))
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, args.t5x_root, env.get('PYTHONPATH'))
                                      if p)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, make, rates in (('ours', ours_command, lambda d: ours_rates(d, args.log_every)),
                              ('t5x', t5x_command, t5x_rates)):
      model_dir = os.path.join(tmp, name)
      wall = run(make(args, model_dir), env, name)
      results[name] = (float(np.mean(rates(model_dir))), wall)
  print(f'{args.model} + {args.variant}, {args.mixture}, batch {args.batch}, '
        f'{args.inputs}/{args.targets} tokens, {args.steps} steps (rates after step '
        f'{args.log_every})')
  print('| trainer | steps/s | whole command s |')
  print('|---|---:|---:|')
  for name, (rate, wall) in results.items():
    print(f'| {name} | {rate:.3f} | {wall:.0f} |')
  print(f'ours / t5x steps/s: {results["ours"][0] / results["t5x"][0]:.2f}x')


if __name__ == '__main__':
  main()
