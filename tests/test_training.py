"""The trainer end to end: demo run, restore + eval + infer, sharded == single device,
preemption and resume, atomic checkpoints, NaN stop, and bad configuration."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 8}', '--gin.EVAL_EVERY_STEPS=0']


def _env(devices=1):
  env = dict(os.environ, HYPERPROMPT_VOCAB='demo', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _cli(module, *args, devices=1, check=True, timeout=600):
  cmd = [sys.executable, '-m', f'hyperprompt_jax.{module}', *args]
  proc = subprocess.run(cmd, env=_env(devices), capture_output=True, text=True, timeout=timeout,
                        cwd=REPO)
  if check and proc.returncode != 0:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
  return proc


def _train_losses(model_dir):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f) if 'loss' in r}


def _saved_steps(model_dir):
  """Steps of the finished checkpoints (t5x's names: MODEL_DIR/checkpoint_<step>)."""
  return sorted(int(n.split('_')[1]) for n in os.listdir(model_dir)
                if n.startswith('checkpoint_') and n.split('_')[1].isdigit())


def _demo(model_dir, steps, *extra, devices=1, check=True):
  return _cli('train', '--gin_file=runs/demo.gin', f'--gin.MODEL_DIR={model_dir}',
              f'--gin.TRAIN_STEPS={steps}', '--gin.train.train.save_every_steps=3', *FAST, *extra,
              devices=devices, check=check)


def test_demo_trains_checkpoints_restores_evaluates_and_infers(tmp_path):
  run = str(tmp_path / 'run')
  proc = _demo(run, 6)
  # A quiet console: every line is ours (other libraries' notices are in MODEL_DIR/logs).
  lines = proc.stderr.strip().splitlines()
  assert lines and all(re.match(r'\d\d:\d\d:\d\d hyperprompt: ', l) for l in lines
                       if not l.startswith('  best ') and 'average of the best' not in l), lines
  assert not any('ETA' in l for l in lines if 'step 1/' in l)  # no ETA before it is timed
  with open(os.path.join(run, 'logs', 'train_0.log')) as f:
    assert 'uncached FunctionDataset' in f.read()  # seqio's notice went to the log file
  losses = _train_losses(run)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(list(losses.values())))
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    first = json.loads(f.readline())
  assert {'learning_rate', 'steps_per_second'} <= set(first)
  assert any(k.startswith('loss/hyperprompt_demo_') for k in first)
  assert _saved_steps(run) == [3, 6]
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(os.path.join(run, 'train')))
  proc = _cli('eval', '--gin_file=runs/eval_demo.gin', f'--gin.MODEL_DIR={run}',
              '--gin.eval.evaluate.max_examples=20')
  record = json.loads(proc.stdout.strip().splitlines()[-1])
  assert record['step'] == 6 and 'eval/average' in record
  assert 'eval/hyperprompt_demo_sentiment/accuracy' in record
  assert 'evaluation at step 6:' in proc.stderr and 'benchmark score:' in proc.stderr
  out_dir = os.path.join(run, 'inference_eval')
  with open(os.path.join(out_dir, 'best.json')) as f:
    assert json.load(f)['tasks']['hyperprompt_demo_topic']['step'] == 6
  with open(os.path.join(out_dir, 'topic-6.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 20 and set(rows[0]) == {'inputs', 'target', 'prediction', 'task_id'}
  assert rows[0]['inputs'].startswith('review:') and rows[0]['target']
  inputs = tmp_path / 'in.jsonl'
  inputs.write_text(json.dumps({'task': 'demo/topic', 'inputs': 'review: the cafe zorbo in '
                                'lima : the price was good and the staff was poor .'}) + '\n')
  _cli('infer', '--gin_file=runs/infer_demo.gin', f'--gin.MODEL_DIR={run}',
       f'--gin.INFER_INPUT={inputs}')
  with open(os.path.join(run, 'inference.jsonl')) as f:
    out = json.loads(f.readline())
  assert out['task'] == 'demo/topic' and isinstance(out['prediction'], str) and out['step'] == 6


def test_eight_devices_with_four_model_partitions_match_one_device(tmp_path):
  one, eight = str(tmp_path / 'one'), str(tmp_path / 'eight')
  _demo(one, 4, '--gin.network.HyperPromptConfig.dropout_rate=0.1')
  _demo(eight, 4, '--gin.network.HyperPromptConfig.dropout_rate=0.1', '--gin.NUM_PARTITIONS=4',
        devices=8)
  a, b = _train_losses(one), _train_losses(eight)
  assert sorted(a) == sorted(b) == [1, 2, 3, 4]
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-4)


def test_sigterm_saves_and_a_rerun_continues_with_identical_losses(tmp_path):
  full, cut = str(tmp_path / 'full'), str(tmp_path / 'cut')
  steps = 60
  args = ['--gin_file=runs/demo.gin', f'--gin.MODEL_DIR={cut}', f'--gin.TRAIN_STEPS={steps}',
          '--gin.train.train.save_every_steps=1000', '--gin.network.HyperPromptConfig.dropout_rate=0.1',
          *FAST]
  proc = subprocess.Popen([sys.executable, '-m', 'hyperprompt_jax.train', *args], env=_env(),
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  path = os.path.join(cut, 'metrics.jsonl')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(_train_losses(cut)) >= 5:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # saved, and not "finished"
  saved = _saved_steps(cut)
  assert len(saved) == 1 and 5 <= saved[0] < steps
  rerun = _cli('train', *args)  # the same command continues
  # ... with its train step loaded from the session's compilation cache (tests/conftest.py),
  # not compiled again, and the losses below are still identical.
  assert 'Train step loaded from the compilation cache' in rerun.stderr, rerun.stderr[-2000:]
  cache = os.environ['HYPERPROMPT_COMPILATION_CACHE']
  assert any(n.startswith('jit_step_fn-') for n in os.listdir(cache))
  _demo(full, steps, '--gin.train.train.save_every_steps=1000',
        '--gin.network.HyperPromptConfig.dropout_rate=0.1')
  a, b = _train_losses(full), _train_losses(cut)
  assert sorted(b) == list(range(1, steps + 1))
  assert [a[s] for s in range(1, steps + 1)] == [b[s] for s in range(1, steps + 1)]


def test_bad_configuration_fails_fast_with_one_line(tmp_path):
  run = str(tmp_path / 'run')
  cases = [
      (['--gin.train.train.not_a_setting=1'], 'Unknown gin binding'),
      (['--gin.network.HyperPromptConfig.num_tasks=3'], 'num_tasks=3'),
  ]
  for extra, expected in cases:
    proc = _demo(run, 2, *extra, check=False)
    assert proc.returncode != 0 and expected in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
  proc = _cli('train', '--gin_file=runs/demo.gin', check=False)
  assert proc.returncode != 0 and 'MODEL_DIR' in proc.stderr.strip().splitlines()[-1]
  missing = tmp_path / 'missing'
  proc = _cli('eval', '--gin_file=runs/eval_demo.gin', f'--gin.MODEL_DIR={missing}', check=False)
  assert proc.returncode != 0 and 'does not exist' in proc.stderr.strip().splitlines()[-1]
  assert not missing.exists()  # nothing was written there
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  proc = _demo(str(a_file), 2, check=False)
  assert 'is a file' in proc.stderr.strip().splitlines()[-1]
  _demo(run, 3)
  config = (tmp_path / 'run' / 'config.gin').read_text()
  proc = _demo(run, 6, '--gin.network.HyperPromptConfig.mlp_dim=128', check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and 'was started with another model: mlp_dim=256 (now 128)' in last
  assert 'new MODEL_DIR' in last
  # The failed rerun left the run's record as it was.
  assert (tmp_path / 'run' / 'config.gin').read_text() == config


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  run = str(tmp_path / 'run')
  _demo(run, 3)
  proc = _demo(run, 6, '--gin.train.train.z_loss=1e39', check=False)  # log(Z)^2 * 1e39 overflows
  assert proc.returncode != 0
  assert 'Loss is' in proc.stderr.strip().splitlines()[-1]
  assert 'step 3' in proc.stderr.strip().splitlines()[-1]
  assert _saved_steps(run) == [3]
  _demo(run, 4)  # still restorable


def test_interrupted_save_leaves_previous_checkpoint_restorable(tmp_path):
  """A save killed midway leaves only orbax's temporary folder; it is never taken as a step."""
  run = str(tmp_path / 'run')
  _demo(run, 3)
  partial = os.path.join(run, 'checkpoint_6.orbax-checkpoint-tmp-1234567')
  os.makedirs(os.path.join(partial, 'default'))
  with open(os.path.join(partial, 'default', 'manifest.ocdbt'), 'wb') as f:
    f.write(b'\x00truncated')
  _demo(run, 4)
  assert sorted(_train_losses(run)) == [1, 2, 3, 4]
  assert 4 in _saved_steps(run)


def test_initial_checkpoint_step_counts_and_the_best_checkpoint_is_kept(tmp_path):
  """t5x's conventions: TRAIN_STEPS is absolute (a run from checkpoint_1000 with
  TRAIN_STEPS=1010 trains 10 steps and writes checkpoint_1010); the checkpoint with the best
  benchmark score is kept beside the last `keep_checkpoints`."""
  start, run = str(tmp_path / 'start'), str(tmp_path / 'run')
  _demo(start, 3)
  shutil.copytree(os.path.join(start, 'checkpoint_3'), str(tmp_path / 'pre' / 'checkpoint_1000'))
  proc = _demo(run, 1010, f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path}/pre/checkpoint_1000',
               '--gin.EVAL_EVERY_STEPS=2', '--gin.train.train.save_every_steps=2',
               '--gin.train.train.keep_checkpoints=1', '--gin.train.train.eval_max_examples=8')
  assert sorted(_train_losses(run)) == list(range(1001, 1011))
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if 'eval/average' in r]
  assert [r['step'] for r in evals] == [1002, 1004, 1006, 1008, 1010]
  score = {r['step']: r['eval/average'] for r in evals}
  kept = _saved_steps(run)  # the last, and a best-scoring one (on ties orbax keeps the later)
  assert 1010 in kept and len(kept) <= 2 and max(score[s] for s in kept) == max(score.values())
  assert 'evaluation at step 1010:' in proc.stderr and 'benchmark score:' in proc.stderr
  assert 'training done: 10 steps (to step 1010)' in proc.stderr
  assert 'average of the best per task:' in proc.stderr
  with open(os.path.join(run, 'config.gin')) as f:
    assert 'TRAIN_STEPS = 1010' in f.read()
  proc = _demo(str(tmp_path / 'short'), 1000,
               f'--gin.INITIAL_CHECKPOINT_PATH={tmp_path}/pre/checkpoint_1000', check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert 'TRAIN_STEPS=1000 is not past' in last and '--gin.TRAIN_STEPS=2000' in last


def test_checkpoint_store_keeps_the_best_scored_step_beside_the_last(tmp_path):
  from hyperprompt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  store = checkpoints.CheckpointStore(str(tmp_path), keep=1)
  state = {'w': np.zeros(3, np.float32)}
  for step, score in [(1, 50.0), (2, 90.0), (3, None), (4, 10.0), (5, 20.0)]:
    store.save(step, state, score=score)
  assert store.all_steps() == [2, 5]
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_2', 'checkpoint_5']


def test_eval_beside_a_running_trainer_loses_nothing(tmp_path):
  """t5x users evaluate in a separate job while training runs: the eval job writes only
  under EVAL_OUTPUT_DIR (default MODEL_DIR/inference_eval), never the trainer's files."""
  run = str(tmp_path / 'run')
  steps = 400
  proc = subprocess.Popen([sys.executable, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
                           f'--gin.MODEL_DIR={run}', f'--gin.TRAIN_STEPS={steps}',
                           '--gin.train.train.save_every_steps=20', *FAST], env=_env(), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  evaluated = []
  try:
    for _ in range(2):
      deadline = time.time() + 300
      while time.time() < deadline and proc.poll() is None:
        saved = _saved_steps(run) if os.path.isdir(run) else []
        if saved and saved[-1] not in evaluated:
          break
        time.sleep(0.1)
      out = _cli('eval', '--gin_file=runs/eval_demo.gin', f'--gin.MODEL_DIR={run}',
                 '--gin.eval.evaluate.max_examples=8')
      evaluated.append(json.loads(out.stdout.strip().splitlines()[-1])['step'])
    still_training = proc.poll() is None
  finally:
    _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert still_training and evaluated[0] < evaluated[1] < steps
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    train_steps = [r['step'] for r in map(json.loads, f)]
  assert train_steps == list(range(1, steps + 1))  # each step's record exactly once
  out_dir = os.path.join(run, 'inference_eval')
  with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
    assert [r['step'] for r in map(json.loads, f)] == evaluated
  for step in evaluated:
    assert os.path.exists(os.path.join(out_dir, f'sentiment-{step}.jsonl'))


def test_cached_tasks_without_a_cache_is_one_line(tmp_path):
  proc = _demo(str(tmp_path / 'run'), 2, '--gin.USE_CACHED_TASKS=True',
               f"--gin.SEQIO_CACHE_DIRS=['{tmp_path}/cache']", check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and 'USE_CACHED_TASKS=True but hyperprompt_demo_' in last
  assert f'{tmp_path}/cache' in last and 'SEQIO_CACHE_DIRS' in last
