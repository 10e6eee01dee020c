"""The TPU pod launcher: the printed command sequence (dry run) covers each point of a run on
real Cloud TPU VMs, and a failed run still brings every worker's log back."""

import os
import shlex
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import tpu_pod  # pylint: disable=g-import-not-at-top

LAUNCHER = os.path.join(REPO, 'launch', 'tpu_pod.py')
RUN = ['--', 'python', '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
       '--gin.MODEL_DIR=gs://b/run']


def _dry_run(*flags, accelerator='v4-32'):
  out = subprocess.run([sys.executable, LAUNCHER, '--name', 'hp', '--zone', 'us-central2-b',
                        '--accelerator', accelerator, '--project', 'proj', '--logs_dir',
                        '/tmp/l', '--dry_run', *flags, *RUN],
                       capture_output=True, text=True, check=True).stdout
  return [shlex.split(line) for line in out.strip().splitlines()]


def test_v4_32_dry_run_prints_every_step():
  lines = _dry_run('--env', 'TFDS_DATA_DIR=gs://b/tfds', '--env', 'HYPERPROMPT_VOCAB=demo')
  create, archive, copy, unpack, install, start, follow, status, *logs, delete = lines
  assert create[4] == 'create' and '--accelerator-type=v4-32' in create
  assert '--version=tpu-ubuntu2204-base' in create and '--project=proj' in create
  assert 'git ls-files -z | tar --null -czf' in archive[-1]  # tracked files only
  assert copy[4] == 'scp' and '--recurse' not in copy and '--worker=all' in copy
  assert 'tar -xzf' in unpack[-1] and '--worker=all' in unpack
  assert 'uv venv -q --seed --python 3.11 .venv' in install[-1]  # 3.11 whatever the image
  assert 'pip install -q -c constraints.txt -e . "jax[tpu]==0.10.2"' in install[-1]
  script = start[-1][len('--command='):]
  assert script.startswith('rm -f ~/hyperprompt_run.exit; nohup bash -c ')
  assert script.endswith('> ~/hyperprompt_run.log 2>&1 < /dev/null &')  # detached from ssh
  inner = shlex.split(script)[6]
  assert inner.startswith('set -o pipefail;')
  assert "export TFDS_DATA_DIR=gs://b/tfds; export HYPERPROMPT_VOCAB=demo;" in inner
  assert 'python -m hyperprompt_jax.train --gin_file=runs/demo.gin --gin.MODEL_DIR=gs://b/run' in inner
  assert inner.endswith('echo $? > ~/hyperprompt_run.exit')
  assert 'tail -n +1 -F ~/hyperprompt_run.log' in follow[-1]
  assert '--worker=0' in follow  # one worker's log on the console, not four interleaved
  assert follow[-1].endswith('exit $(cat ~/hyperprompt_run.exit)')  # the run's exit code
  assert '--worker=all' in status and 'tail' not in status[-1]
  assert status[-1].endswith('exit $(cat ~/hyperprompt_run.exit)')
  assert [l[-1] for l in logs] == [f'--worker={w}' for w in range(4)]
  assert logs[0][6] == '/tmp/l/worker_0.log'
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'hp']


@pytest.mark.parametrize('accelerator,version', [('v4-8', 'tpu-ubuntu2204-base'),
                                                 ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
                                                 ('v5p-64', 'v2-alpha-tpuv5'),
                                                 ('v6e-16', 'v2-alpha-tpuv6e')])
def test_runtime_version_follows_the_accelerator_family(accelerator, version):
  assert f'--version={version}' in _dry_run(accelerator=accelerator)[0]


def test_spot_queued_resources_are_requested_waited_for_and_deleted(tmp_path):
  lines = _dry_run('--spot', '--queued')
  assert lines[0][:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create']
  assert '--spot' in lines[0] and '--runtime-version=tpu-ubuntu2204-base' in lines[0]
  wait = lines[1][-1]
  assert 'ACTIVE) exit 0' in wait and 'FAILED|SUSPENDING|SUSPENDED)' in wait
  # The wait loop really stops: run it against a fake gcloud that reports FAILED.
  fake = tmp_path / 'gcloud'
  fake.write_text("#!/bin/sh\necho FAILED\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
  proc = subprocess.run(lines[1], env=env, capture_output=True, text=True, timeout=20)
  assert proc.returncode == 1 and 'queued resource hp is FAILED' in proc.stderr
  assert lines[-1][:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete']


def test_a_failed_run_still_fetches_every_log_and_keeps_the_slice(tmp_path):
  """A fake gcloud fails the 'follow' step (the run's exit code): the launcher exits 1,
  copies all four workers' logs and does not delete the slice."""
  calls = tmp_path / 'calls'
  fake = tmp_path / 'bin' / 'gcloud'
  fake.parent.mkdir()
  fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                  'case "$*" in *"tail -n"*) exit 3;; esac\nexit 0\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f'{fake.parent}{os.pathsep}{os.environ["PATH"]}')
  proc = subprocess.run([sys.executable, LAUNCHER, '--name', 'hp', '--zone', 'z',
                         '--accelerator', 'v4-32', '--logs_dir', str(tmp_path / 'logs'), *RUN],
                        env=env, capture_output=True, text=True)
  assert proc.returncode == 1 and 'follow step failed' in proc.stderr
  made = calls.read_text().splitlines()
  assert sum(' scp hp:~/hyperprompt_run.log ' in f' {c} ' for c in made) == 4
  assert not any(c.startswith('compute tpus tpu-vm delete') for c in made)


def test_another_jax_version_drops_only_jax_s_pins():
  install = _dry_run()[4][-1]
  assert 'grep' not in install and '-c constraints.txt' in install
  install = _dry_run('--jax_version', '0.10.3')[4][-1]
  assert "grep -v -E '^(jax|jaxlib|libtpu)==' constraints.txt > constraints_jax.txt" in install
  assert 'pip install -q -c constraints_jax.txt -e . "jax[tpu]==0.10.3"' in install
  with pytest.raises(SystemExit):
    tpu_pod.main(['--name', 'x', '--zone', 'z', '--accelerator', 'v4-8', '--jax_version',
                  'latest', '--dry_run', '--', 'true'])


@pytest.mark.parametrize('accelerator,hosts', [('v4-8', 1), ('v4-32', 4), ('v5p-128', 16),
                                                ('v5litepod-8', 1), ('v5litepod-16', 4),
                                                ('v6e-64', 16)])
def test_worker_counts(accelerator, hosts):
  assert tpu_pod.num_workers(accelerator) == hosts


def test_bad_arguments_are_errors():
  with pytest.raises(ValueError, match='Unknown accelerator'):
    tpu_pod.num_workers('v9-32')
  with pytest.raises(SystemExit):
    tpu_pod.main(['--name', 'x', '--zone', 'z', '--accelerator', 'v4-8', '--dry_run'])
  with pytest.raises(SystemExit):
    tpu_pod.main(['--name', 'x', '--zone', 'z', '--accelerator', 'v4-8', '--env', 'NOEQUALS',
                  '--dry_run', '--', 'true'])
