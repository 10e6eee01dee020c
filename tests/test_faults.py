"""Nothing a user trained is lost: retention, the NaN guard, Ctrl-C, one trainer per
MODEL_DIR, resuming past an unreadable checkpoint or a torn metrics line, and bad numbers
stopped before anything is built."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hyperprompt_jax import checkpoints, files, run_lock, train
from tests.test_training import FAST, REPO, _demo, _env, _saved_steps, _train_losses


# ---- in-process ------------------------------------------------------------------------------

def test_retention_keeps_at_least_one_checkpoint(tmp_path):
  for keep in (0, -1, '3'):
    with pytest.raises(checkpoints.CheckpointError, match='keep at least 1'):
      checkpoints.CheckpointStore(str(tmp_path), keep)
  store = checkpoints.CheckpointStore(str(tmp_path / 'one'), 1)
  for step in (1, 2, 3):
    store.save(step, {'w': np.full(3, step, np.float32)})
    assert store.all_steps() == [step]  # the newest is complete before the older goes


@pytest.mark.parametrize('name,value,expected', [
    ('train_steps', -5, 'TRAIN_STEPS=-5: must be >= 0 (TRAIN_STEPS is the absolute step'),
    ('train_steps', 'abc', "TRAIN_STEPS='abc': must be a whole number"),
    ('batch_size', 0, 'BATCH_SIZE=0: must be >= 1'),
    ('save_every_steps', 0, 'train.train.save_every_steps=0: must be >= 1'),
    ('keep_checkpoints', 0, 'keep_checkpoints=0 would delete every checkpoint'),
    ('log_every_steps', 1.5, 'train.train.log_every_steps=1.5: must be a whole number'),
])
def test_loop_numbers_are_checked_before_anything_is_built(name, value, expected):
  values = dict(train_steps=10, batch_size=2, save_every_steps=5, keep_checkpoints=3,
                log_every_steps=1, eval_every_steps=0, eval_batch_size=2, num_microbatches=1,
                max_segments=2)
  values[name] = value
  with pytest.raises(train.TrainingError) as e:
    train.check_train_args(**values)
  assert expected in str(e.value)


def test_a_torn_last_metrics_line_is_dropped_and_a_bad_middle_line_named(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
  assert files.read_jsonl(str(path)) == [{'step': 1, 'loss': 2.0}]
  path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
  with pytest.raises(ValueError, match=f'{path} line 2 is not JSON'):
    files.read_jsonl(str(path))
  path.write_text('{"step": 1}\n7\n')
  with pytest.raises(ValueError, match='line 2 is not a JSON object'):
    files.read_jsonl(str(path))


def test_paths_expand_the_home_folder_and_variables(monkeypatch):
  monkeypatch.setenv('HP_RUNS', '/data/runs')
  assert files.expand('~/run') == os.path.expanduser('~/run') and '~' not in files.expand('~/a')
  assert files.expand('$HP_RUNS/a') == '/data/runs/a'
  assert files.expand('gs://b/~x') == 'gs://b/~x'


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path):
  path = tmp_path / run_lock.LOCK_FILE
  now = [1000.0]
  lock = run_lock.RunLock(str(tmp_path), clock=lambda: now[0])
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  path.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'heartbeat': 999}))
  lock.acquire()  # its process is gone from this host
  assert json.loads(path.read_text())['pid'] == os.getpid()
  lock.release()
  assert not path.exists()
  path.write_text(json.dumps({'host': 'tpu-vm-7', 'pid': 12, 'heartbeat': 900.0,
                              'started': 'then'}))
  with pytest.raises(run_lock.LockedError, match=r'in use by another trainer \(host tpu-vm-7'):
    lock.acquire()  # another host, heartbeat 100 s old: alive
  now[0] = 900.0 + run_lock.STALE_SECONDS + 1
  lock.acquire()  # another host, no heartbeat for longer than STALE_SECONDS
  lock.release()
  # This host, a live process (a reused pid?): refused while its heartbeat is fresh only.
  alive = {'host': socket.gethostname(), 'pid': os.getppid(), 'heartbeat': now[0] - 5}
  path.write_text(json.dumps(alive))
  with pytest.raises(run_lock.LockedError, match=f'pid {os.getppid()}'):
    lock.acquire()
  path.write_text(json.dumps(dict(alive, heartbeat=now[0] - run_lock.STALE_SECONDS - 1)))
  lock.acquire()
  lock.release()


# ---- the train command -----------------------------------------------------------------------

def test_diverged_parameters_are_never_saved(tmp_path):
  """The step's own loss is finite (computed before its update); the parameters it leaves
  are not: the save is refused and nothing diverged is written."""
  run = str(tmp_path / 'run')
  proc = _demo(run, 2, '--gin.train.train.learning_rate=1e30',
               '--gin.train.train.save_every_steps=1', check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and 'The parameters after step 1 give loss' in last, last
  assert 'not saved' in last and _saved_steps(run) == []
  assert _train_losses(run)[1] < 10  # the step itself looked fine


def test_ctrl_c_saves_and_a_second_trainer_is_refused_by_the_lock(tmp_path):
  run = str(tmp_path / 'run')
  args = [sys.executable, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
          f'--gin.MODEL_DIR={run}', '--gin.TRAIN_STEPS=2000', '--gin.train.train.save_every_steps=2',
          *FAST]
  proc = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
        os.path.exists(os.path.join(run, 'metrics.jsonl')) and len(_train_losses(run)) >= 5):
      time.sleep(0.05)
    second = subprocess.run(args, env=_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  last = second.stderr.strip().splitlines()[-1]
  assert second.returncode != 0 and 'is in use by another trainer' in last, last
  assert f'pid {proc.pid}' in last
  assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
  assert 'Traceback' not in err and 'SIGINT: saved step' in err
  saved = _saved_steps(run)
  assert saved and saved[-1] == max(_train_losses(run))  # the interrupted step was saved
  assert not os.path.exists(os.path.join(run, run_lock.LOCK_FILE))


def test_resume_passes_over_an_unreadable_checkpoint_and_a_torn_metrics_line(tmp_path):
  run = str(tmp_path / 'run')
  _demo(run, 4, '--gin.train.train.save_every_steps=2', '--gin.train.train.keep_checkpoints=2')
  assert _saved_steps(run) == [2, 4]
  newest = os.path.join(run, 'checkpoint_4')
  for root, _, names in os.walk(newest):  # cut every array file short (a full disk)
    for name in names:
      if 'manifest' in name or name.endswith('.ocdbt') or 'd' == os.path.basename(root):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(3)
  with open(os.path.join(run, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 5, "lo')
  proc = _demo(run, 5, '--gin.train.train.save_every_steps=2',
               '--gin.train.train.keep_checkpoints=2')
  assert 'checkpoint_4 cannot be read' in proc.stderr and 'Resumed from' in proc.stderr
  assert 'at step 2.' in proc.stderr and 'torn last line' in proc.stderr
  assert os.path.isdir(newest + '.unreadable')  # set aside, not deleted
  assert sorted(_train_losses(run)) == [1, 2, 3, 4, 5] and 5 in _saved_steps(run)


def test_infer_inputs_name_the_file_and_line_of_each_bad_line(tmp_path):
  from hyperprompt_jax import infer
  path = tmp_path / 'in.jsonl'
  path.write_text('')
  assert infer.read_inputs(str(path)) == ([], [])
  good = json.dumps({'task': 'demo/topic', 'inputs': 'review: the cafe .'})
  cases = [('{"task": "demo/topic", "inputs": ', 'line 2 is not JSON'),
           ('7', 'line 2 needs an object with "task" and "inputs" strings'),
           ('{"task": "demo/nope", "inputs": "x"}', "line 2: Unknown task 'demo/nope'")]
  for bad, expected in cases:
    path.write_text(good + '\n' + bad + '\n')
    with pytest.raises(ValueError, match=f'{path} {expected}'):
      infer.read_inputs(str(path))
  path.write_text(good + '\n\n' + good + '\n')
  rows, ids = infer.read_inputs(str(path))
  assert len(rows) == 2 and ids == [1, 1]


def test_sigterm_during_an_evaluation_saves_and_the_rerun_evaluates_that_step(tmp_path):
  run = str(tmp_path / 'run')
  args = [sys.executable, '-m', 'hyperprompt_jax.train', '--gin_file=runs/demo.gin',
          f'--gin.MODEL_DIR={run}', '--gin.TRAIN_STEPS=2', '--gin.EVAL_EVERY_STEPS=2',
          '--gin.train.train.report_every_seconds=0', '--gin.train.train.eval_batch_size=20',
          '--gin.TASK_FEATURE_LENGTHS={"inputs": 64, "targets": 8}']
  proc = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  seen = []
  for line in proc.stderr:  # the evaluation starts right after step 2's progress line
    seen.append(line)
    if 'step 2/2' in line:
      proc.send_signal(signal.SIGTERM)
      break
  began = time.time()
  err = ''.join(seen) + proc.communicate(timeout=300)[1]
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert time.time() - began < 60 and 'SIGTERM during the evaluation of step 2' in err
  assert _saved_steps(run) == [2]
  records = lambda: [r['step'] for r in files.read_jsonl(
      os.path.join(run, 'training_eval', 'metrics.jsonl'))]
  assert records() == []  # it did not finish
  rerun = subprocess.run(args, env=_env(), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'Step 2 was saved before its evaluation finished: evaluating it now.' in rerun.stderr
  assert records() == [2]
