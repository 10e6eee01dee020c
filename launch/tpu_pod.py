"""Cloud TPU VM (pod) launcher: create, copy the repo, install, run on every worker, copy
logs back, delete. `--dry_run` prints every command instead of running it.

    python launch/tpu_pod.py --name hp-glue --zone us-central2-b --accelerator v4-32 \
      --project my-project --logs_dir ./logs -- \
      python -m hyperprompt_jax.train --gin_file=models/base.gin --gin_file=variants/global.gin \
        --gin_file=runs/finetune_glue.gin --gin.MODEL_DIR=gs://bucket/run \
        --gin.INITIAL_CHECKPOINT_PATH=gs://t5-data/pretrained_models/t5x/t5_1_1_base/checkpoint_1000000

The command after `--` runs on all workers at once with HYPERPROMPT_MULTIHOST=1, so that
`jax.distributed` initialises and each host reads its own shard of the input. The TPU VM is
deleted at the end unless --keep (it is kept when the run fails, to look at it).
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = '~/hyperprompt_jax'
LOG = '~/hyperprompt_train.log'


def num_workers(accelerator: str) -> int:
  """Hosts of a TPU slice: v2/v3/v4/v5p name TensorCores (8 per host), v5e/v6e chips."""
  m = re.fullmatch(r'(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)', accelerator)
  if not m:
    raise ValueError(f'Unknown accelerator type {accelerator!r}: use e.g. v4-32, v5p-64, '
                     'v5litepod-16 or v6e-16.')
  family, n = m.group(1), int(m.group(2))
  if family in ('v5litepod', 'v6e'):
    return 1 if n <= 8 else n // 4
  return max(1, n // 8)


def commands(args, run: List[str]) -> List[List[str]]:
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
  create = tpu + ['create', args.name, *where, f'--accelerator-type={args.accelerator}',
                  f'--version={args.version}'] + (['--spot'] if args.spot else [])
  copy = tpu + ['scp', '--recurse', REPO, f'{args.name}:{REMOTE_DIR}', *where, '--worker=all']
  setup = (f'cd {REMOTE_DIR} && python3 -m venv .venv && . .venv/bin/activate && '
           f'pip install -q -e . "jax[tpu]=={args.jax_version}"')
  install = tpu + ['ssh', args.name, *where, '--worker=all', f'--command={setup}']
  remote = (f'cd {REMOTE_DIR} && . .venv/bin/activate && HYPERPROMPT_MULTIHOST=1 '
            f'{shlex.join(run)} 2>&1 | tee {LOG}')
  train = tpu + ['ssh', args.name, *where, '--worker=all', f'--command={remote}']
  logs = [tpu + ['scp', f'{args.name}:{LOG}',
                 os.path.join(args.logs_dir, f'worker_{w}.log'), *where, f'--worker={w}']
          for w in range(num_workers(args.accelerator))]
  delete = tpu + ['delete', args.name, *where, '--quiet']
  return [create, copy, install, train, *logs] + ([] if args.keep else [delete])


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  run = argv[argv.index('--') + 1:] if '--' in argv else []
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--name', required=True)
  parser.add_argument('--zone', required=True)
  parser.add_argument('--accelerator', required=True, help='e.g. v4-32')
  parser.add_argument('--version', default='tpu-ubuntu2204-base', help='TPU VM software')
  parser.add_argument('--project', default=None)
  parser.add_argument('--jax_version', default='0.10.2')
  parser.add_argument('--logs_dir', default='./tpu_logs')
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--keep', action='store_true', help='do not delete the TPU VM')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
  if not run:
    parser.error('give the command to run on every worker after `--`.')
  steps = commands(args, run)
  if args.dry_run:
    for step in steps:
      print(shlex.join(step))
    return 0
  os.makedirs(args.logs_dir, exist_ok=True)
  for i, step in enumerate(steps):
    print('+', shlex.join(step), flush=True)
    if subprocess.run(step).returncode != 0:
      failed_run = i == 3
      print(f'error: step failed: {step[4]}' + ('; the TPU VM is kept for inspection, delete '
            f'it with: gcloud compute tpus tpu-vm delete {args.name} --zone={args.zone}'
            if failed_run else ''), file=sys.stderr)
      return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
