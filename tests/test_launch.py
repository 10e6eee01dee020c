"""The TPU pod launcher's dry run prints the right command sequence."""

import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import tpu_pod  # pylint: disable=g-import-not-at-top


def test_v4_32_dry_run_prints_every_step():
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch', 'tpu_pod.py'), '--name', 'hp', '--zone',
       'us-central2-b', '--accelerator', 'v4-32', '--project', 'proj', '--logs_dir', '/tmp/l',
       '--dry_run', '--', 'python', '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
       '--gin.MODEL_DIR=gs://b/run'], capture_output=True, text=True, check=True).stdout
  lines = [shlex.split(l) for l in out.strip().splitlines()]
  verbs = [l[4] for l in lines]
  assert verbs == ['create', 'scp', 'ssh', 'ssh', 'scp', 'scp', 'scp', 'scp', 'delete']
  assert '--accelerator-type=v4-32' in lines[0] and '--project=proj' in lines[0]
  assert '--worker=all' in lines[1] and '--worker=all' in lines[2] and '--worker=all' in lines[3]
  assert 'pip install -q -e . "jax[tpu]==0.10.2"' in lines[2][-1]
  run = lines[3][-1]
  assert 'HYPERPROMPT_MULTIHOST=1 python -m hyperprompt_jax.train --gin_file=runs/demo.gin' in run
  assert "--gin.MODEL_DIR=gs://b/run" in run
  assert [l[-1] for l in lines[4:8]] == [f'--worker={w}' for w in range(4)]
  assert lines[4][6] == '/tmp/l/worker_0.log'
  assert lines[8][:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'hp']


@pytest.mark.parametrize('accelerator,hosts', [('v4-8', 1), ('v4-32', 4), ('v5p-128', 16),
                                                ('v5litepod-8', 1), ('v5litepod-16', 4),
                                                ('v6e-64', 16)])
def test_worker_counts(accelerator, hosts):
  assert tpu_pod.num_workers(accelerator) == hosts


def test_unknown_accelerator_and_missing_command_are_errors():
  with pytest.raises(ValueError, match='Unknown accelerator'):
    tpu_pod.num_workers('v9-32')
  with pytest.raises(SystemExit):
    tpu_pod.main(['--name', 'x', '--zone', 'z', '--accelerator', 'v4-8', '--dry_run'])
