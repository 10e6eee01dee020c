"""Cloud TPU VM (pod) launcher: create the slice, copy the tracked files, install a Python 3.11
environment, run one command on every worker detached from ssh with its log streamed, copy
every worker's log back (on failure too), delete. `--dry_run` prints every command.

    python launch/tpu_pod.py --name hp-glue --zone us-central2-b --accelerator v4-32 \
      --project my-project --env TFDS_DATA_DIR=gs://bucket/tfds -- \
      python -m hyperprompt_jax.train --gin_file=models/base.gin --gin_file=variants/global.gin \
        --gin_file=runs/finetune_glue.gin --gin.MODEL_DIR=gs://bucket/run \
        --gin.INITIAL_CHECKPOINT_PATH=gs://t5-data/pretrained_models/t5x/t5_1_1_base/checkpoint_1000000

The command runs on all workers at once; jax.distributed finds the other hosts by itself on
TPU VMs and each host reads its own shard of the input. The run survives a dropped ssh
session (it runs under nohup; the launcher only follows its log). The slice is deleted at the
end unless --keep, or when the run failed (kept to look at it; the delete command is printed).
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = 'hyperprompt_jax'
LOG = 'hyperprompt_run.log'
EXIT = 'hyperprompt_run.exit'
ARCHIVE = 'hyperprompt_src.tar.gz'
# TPU VM runtime (software) versions per accelerator family (Cloud TPU documentation).
RUNTIMES = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
            'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
PYTHON = '3.11'
# Pins that a --jax_version other than constraints.txt's replaces (jax[tpu] brings its own).
JAX_PINS = ('jax', 'jaxlib', 'libtpu')


def pinned_jax_version() -> str:
  with open(os.path.join(REPO, 'constraints.txt')) as f:
    for line in f:
      if line.startswith('jax=='):
        return line.strip().split('==')[1]
  raise ValueError('constraints.txt pins no jax version.')


def parse_accelerator(accelerator: str) -> Tuple[str, int]:
  m = re.fullmatch(r'(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)', accelerator)
  if not m:
    raise ValueError(f'Unknown accelerator type {accelerator!r}: use e.g. v4-32, v5p-64, '
                     'v5litepod-16 or v6e-16.')
  return m.group(1), int(m.group(2))


def num_workers(accelerator: str) -> int:
  """Hosts of a TPU slice: v2/v3/v4/v5p name TensorCores (8 per host), v5e/v6e chips."""
  family, n = parse_accelerator(accelerator)
  if family in ('v5litepod', 'v6e'):
    return 1 if n <= 8 else n // 4
  return max(1, n // 8)


def commands(args, run: List[str]) -> List[Tuple[str, List[str]]]:
  """(stage, argv) pairs: create, wait (queued only), archive, copy, unpack, install,
  start, follow (worker 0), status (all workers), logs..., delete."""
  family, _ = parse_accelerator(args.accelerator)
  version = args.version or RUNTIMES[family]
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
  ssh = lambda command, worker='all': tpu + ['ssh', args.name, *where, f'--worker={worker}',
                                             f'--command={command}']
  steps = []
  if args.queued:
    queued = ['gcloud', 'compute', 'tpus', 'queued-resources']
    steps.append(('create', queued + ['create', args.name, f'--node-id={args.name}', *where,
                                      f'--accelerator-type={args.accelerator}',
                                      f'--runtime-version={version}']
                  + (['--spot'] if args.spot else [])))
    # Until ACTIVE; a request that FAILED or was SUSPENDED never becomes active: stop there.
    wait = (f'while true; do s=$({shlex.join(queued)} describe {args.name} {shlex.join(where)} '
            "--format='value(state.state)'); case $s in ACTIVE) exit 0;; "
            f'FAILED|SUSPENDING|SUSPENDED) echo "queued resource {args.name} is $s" >&2; '
            'exit 1;; esac; sleep 30; done')
    steps.append(('wait', ['bash', '-c', wait]))
  else:
    steps.append(('create', tpu + ['create', args.name, *where,
                                   f'--accelerator-type={args.accelerator}',
                                   f'--version={version}'] + (['--spot'] if args.spot else [])))
  local_archive = os.path.join(args.logs_dir, ARCHIVE)
  # Only tracked files (their working-tree state): no .venv, .git or run outputs.
  steps.append(('archive', ['bash', '-c', f'cd {shlex.quote(REPO)} && git ls-files -z | '
                            f'tar --null -czf {shlex.quote(os.path.abspath(local_archive))} -T -']))
  steps.append(('copy', tpu + ['scp', local_archive, f'{args.name}:~/{ARCHIVE}', *where,
                               '--worker=all']))
  steps.append(('unpack', ssh(f'rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && '
                              f'tar -xzf {ARCHIVE} -C {REMOTE_DIR}')))
  # Python 3.11 whatever the image ships: uv (from PyPI) fetches a standalone interpreter.
  # Another jax than the pinned one: the other pins stay, jax's own are dropped.
  constraints = 'constraints.txt'
  if args.jax_version != pinned_jax_version():
    drop = '|'.join(JAX_PINS)
    constraints = 'constraints_jax.txt'
    prepare = f"grep -v -E '^({drop})==' constraints.txt > {constraints}; "
  else:
    prepare = ''
  setup = (f'set -e; cd {REMOTE_DIR}; python3 -m pip install -q --user uv; '
           f'~/.local/bin/uv venv -q --seed --python {PYTHON} .venv; . .venv/bin/activate; '
           f'{prepare}pip install -q -c {constraints} -e . "jax[tpu]=={args.jax_version}"')
  steps.append(('install', ssh(setup)))
  env = ' '.join(f'export {shlex.quote(e)};' for e in args.env)
  script = (f'set -o pipefail; cd {REMOTE_DIR} && . .venv/bin/activate && {env} '
            f'export HYPERPROMPT_MULTIHOST=1; {shlex.join(run)}')
  start = (f'rm -f ~/{EXIT}; nohup bash -c {shlex.quote(script + f"; echo $? > ~/{EXIT}")} '
           f'> ~/{LOG} 2>&1 < /dev/null &')
  steps.append(('start', ssh(start)))
  # The console follows worker 0's log (the others' would interleave line by line); then
  # every worker's exit status is collected: the run failed if any worker's did.
  wait_exit = f'while [ ! -f ~/{EXIT} ]; do sleep 10; done; '
  follow = f'tail -n +1 -F ~/{LOG} & T=$!; {wait_exit}kill $T; exit $(cat ~/{EXIT})'
  steps.append(('follow', ssh(follow, worker='0')))
  steps.append(('status', ssh(f'{wait_exit}exit $(cat ~/{EXIT})')))
  for w in range(num_workers(args.accelerator)):
    steps.append(('logs', tpu + ['scp', f'{args.name}:~/{LOG}',
                                 os.path.join(args.logs_dir, f'worker_{w}.log'), *where,
                                 f'--worker={w}']))
  if not args.keep:
    if args.queued:
      steps.append(('delete', ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete',
                               args.name, *where, '--quiet', '--force']))
    else:
      steps.append(('delete', tpu + ['delete', args.name, *where, '--quiet']))
  return steps


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  run = argv[argv.index('--') + 1:] if '--' in argv else []
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--name', required=True)
  parser.add_argument('--zone', required=True)
  parser.add_argument('--accelerator', required=True, help='e.g. v4-32, v5litepod-16, v6e-16')
  parser.add_argument('--version', default=None,
                      help='TPU VM runtime version (default: by accelerator family)')
  parser.add_argument('--project', default=None)
  parser.add_argument('--jax_version', default=pinned_jax_version(),
                      help="jax[tpu]'s version (default: constraints.txt's pin)")
  parser.add_argument('--logs_dir', default='./tpu_logs')
  parser.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                      help='environment variable for every worker (repeatable), e.g. '
                           'TFDS_DATA_DIR=gs://bucket/tfds or HYPERPROMPT_VOCAB=...')
  parser.add_argument('--spot', action='store_true', help='spot (preemptible) capacity')
  parser.add_argument('--queued', action='store_true',
                      help='request the slice as a queued resource and wait for it')
  parser.add_argument('--keep', action='store_true', help='do not delete the TPU VM')
  parser.add_argument('--dry_run', action='store_true', help='print the commands only')
  args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
  if not run:
    parser.error('give the command to run on every worker after `--`.')
  try:
    parse_accelerator(args.accelerator)
  except ValueError as e:
    parser.error(str(e))
  if not re.fullmatch(r'\d+\.\d+\.\d+', args.jax_version):
    parser.error(f'--jax_version {args.jax_version!r}: write a release such as 0.10.2.')
  for item in args.env:
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', item):
      parser.error(f'--env {item!r}: write KEY=VALUE.')
  steps = commands(args, run)
  if args.dry_run:
    for _, step in steps:
      print(shlex.join(step))
    return 0
  os.makedirs(args.logs_dir, exist_ok=True)
  failed = None
  for stage, step in steps:
    if failed and stage != 'logs':
      continue  # after a failure only the logs are fetched; the slice is kept
    print('+', shlex.join(step), flush=True)
    if subprocess.run(step).returncode != 0 and not failed:
      failed = stage
      if stage not in ('start', 'follow', 'status'):
        break
  if failed:
    print(f'error: the {failed} step failed; logs are in {args.logs_dir}. The TPU VM is kept '
          f'for inspection: gcloud compute tpus tpu-vm delete {args.name} --zone={args.zone}',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
