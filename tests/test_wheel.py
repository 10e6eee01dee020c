"""A wheel install works outside the repository: the gin files and the demo's vocabulary ship
inside the packages, so `--help` and the demo run from any folder."""

import os
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, **kwargs):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kwargs)
  assert proc.returncode == 0, f'{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
  return proc


def test_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path):
  dist = tmp_path / 'dist'
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
        '-w', str(dist), REPO], cwd=REPO)
  wheel, = [str(p) for p in dist.glob('hyperprompt_jax-*.whl')]
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', str(venv)])
  python = str(venv / 'bin' / 'python')
  site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']
              ).stdout.strip()
  _run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
        '--target', site, wheel])
  # The dependencies come from this environment's site-packages, added as a plain path: its
  # .pth files (the editable install of this checkout among them) are not processed.
  with open(os.path.join(site, 'deps.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(HYPERPROMPT_VOCAB='demo', TF_CPP_MIN_LOG_LEVEL='3')
  where = _run([python, '-c', 'import hyperprompt_jax.gin_utils as g, hyperprompt_tasks as t; '
                'print(g.GIN_DIR); print(t.__file__)'], cwd=tmp_path, env=env).stdout.split()
  assert all(p.startswith(site) for p in where), where
  help_text = _run([python, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin', '--help'],
                   cwd=tmp_path, env=env).stdout
  assert 'MODEL_DIR = REQUIRED' in help_text
  run = tmp_path / 'run'
  _run([python, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
        f'--gin.MODEL_DIR={run}', '--gin.TRAIN_STEPS=2', '--gin.EVAL_EVERY_STEPS=0',
        '--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 8}'], cwd=tmp_path, env=env)
  assert (run / 'checkpoint_2').is_dir() and (run / 'config.gin').exists()
