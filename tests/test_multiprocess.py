"""Pod scale on one machine: two processes x 4 simulated CPU devices (jax.distributed, gloo
collectives) against one process with 8 devices — training with the model axis inside and
across processes, from an INITIAL_CHECKPOINT_PATH, SIGTERM to both and resume, evaluation,
sharded restore; and 2-D parameter sharding."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_training import FAST, REPO, _env, _saved_steps, _train_losses

DEMO = ['--gin_file=runs/demo.gin', *FAST, '--gin.train.train.save_every_steps=3']
# 8 heads (of 8 dims): the demo model split 8 ways along 'model', across both processes.
HEADS_8 = ['--gin.network.HyperPromptConfig.num_heads=8', '--gin.network.HyperPromptConfig.head_dim=8']


def _port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_pair(module, args):
  """Starts `python -m hyperprompt_jax.<module> args` as processes 0 and 1 of a 2-process
  jax.distributed job, 4 CPU devices each."""
  address = f'127.0.0.1:{_port()}'
  procs = []
  for index in (0, 1):
    cmd = [sys.executable, '-m', f'hyperprompt_jax.{module}', *args,
           f'--coordinator_address={address}', '--process_count=2', f'--process_index={index}']
    procs.append(subprocess.Popen(cmd, env=_env(4), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=600, status=0):
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == status, err[-3000:]
  return [out for out, _ in outs]


def _two(module, *args):
  return _finish(_start_pair(module, args))


def _one(module, *args, devices=8):
  proc = subprocess.run([sys.executable, '-m', f'hyperprompt_jax.{module}', *args],
                        env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _assert_same_losses(a_dir, b_dir, steps, first=1):
  a, b = _train_losses(a_dir), _train_losses(b_dir)
  assert sorted(a) == sorted(b) == list(range(first, steps + 1))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-4)


@pytest.mark.parametrize('partitions', [8, 2])
def test_two_processes_train_resume_and_evaluate_like_one(tmp_path, partitions):
  """NUM_PARTITIONS=8: the model axis spans both processes (each reads the whole batch);
  NUM_PARTITIONS=2: data parallel over processes (each reads its own input shard)."""
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  args = [*DEMO, *HEADS_8, f'--gin.NUM_PARTITIONS={partitions}',
          '--gin.train.train.input_shards=2']
  _one('train', *args, f'--gin.MODEL_DIR={one}', '--gin.TRAIN_STEPS=4')
  _two('train', *args, f'--gin.MODEL_DIR={two}', '--gin.TRAIN_STEPS=4')
  _assert_same_losses(one, two, 4)
  assert _saved_steps(two) == [3, 4]
  # Each input shard's position once (by the first process that reads it), and the layout.
  assert sorted(os.listdir(os.path.join(two, 'input_state', 'step_4'))) == [
      'layout.json', 'shard_0.data-00000-of-00001', 'shard_0.index',
      'shard_1.data-00000-of-00001', 'shard_1.index']
  with open(os.path.join(two, 'metrics.jsonl')) as f:  # written once, by process 0
    assert [json.loads(line)['step'] for line in f] == [1, 2, 3, 4]
  if partitions == 2:
    # Data parallel over processes, resumed in one process: the same batches, exactly,
    # since input_shards fixes the layout; another layout says the input restarts.
    _one('train', *args, f'--gin.MODEL_DIR={one}', '--gin.TRAIN_STEPS=6')
    _one('train', *args, f'--gin.MODEL_DIR={two}', '--gin.TRAIN_STEPS=6')
    _assert_same_losses(one, two, 6)
    out = subprocess.run([sys.executable, '-m', 'hyperprompt_jax.train', *args,
                          f'--gin.MODEL_DIR={two}', '--gin.TRAIN_STEPS=7',
                          '--gin.train.train.input_shards=4'], env=_env(8), cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ('The input restarts from its beginning at step 6: it was saved as 2 shard(s) of '
            'a 16-row batch and this run reads 4 of 16 (bind train.train.input_shards=2'
            in out.stderr), out.stderr[-2000:]
    _eval_and_infer_like_one(one, partitions, tmp_path, infer=False)  # infer: the [8] case
    return  # resuming data-parallel processes in two: the SIGTERM test below
  _one('train', *args, f'--gin.MODEL_DIR={one}', '--gin.TRAIN_STEPS=6')  # resume
  _two('train', *args, f'--gin.MODEL_DIR={two}', '--gin.TRAIN_STEPS=6')
  _assert_same_losses(one, two, 6)
  _eval_and_infer_like_one(one, partitions, tmp_path)


def _eval_and_infer_like_one(model_dir, partitions, tmp_path, infer=True):
  """The eval and infer commands laid out as in training (NUM_PARTITIONS, parameters
  restored into their shardings, batches decoded split over 'data'): in two processes they
  give one process's scores, prediction files and inference file."""
  layout = [*HEADS_8, f'--gin.NUM_PARTITIONS={partitions}', f'--gin.MODEL_DIR={model_dir}']
  evaluate = ['--gin_file=runs/eval_demo.gin', *layout, '--gin.eval.evaluate.max_examples=12',
              '--gin.eval.evaluate.batch_size=8']  # 12 rows: two batches, the last padded
  single_dir, pair_dir = str(tmp_path / 'eval_one'), str(tmp_path / 'eval_two')
  single = json.loads(_one('eval', *evaluate, f'--gin.EVAL_OUTPUT_DIR={single_dir}'
                           ).splitlines()[-1])
  pair = [json.loads(out.splitlines()[-1])
          for out in _two('eval', *evaluate, f'--gin.EVAL_OUTPUT_DIR={pair_dir}')]
  assert pair[0] == pair[1]
  assert pair[0].keys() == single.keys() and pair[0]['step'] == single['step']
  assert pair[0]['examples'] == single['examples'] and pair[0]['split'] == single['split']
  scores = sorted(k for k in single if k.startswith('eval/'))
  np.testing.assert_allclose([pair[0][k] for k in scores], [single[k] for k in scores],
                             atol=1e-6)
  predictions = sorted(n for n in os.listdir(single_dir) if n.endswith('.jsonl')
                       and n != 'metrics.jsonl')
  assert predictions and predictions == sorted(
      n for n in os.listdir(pair_dir) if n.endswith('.jsonl') and n != 'metrics.jsonl')
  for name in predictions:
    with open(os.path.join(single_dir, name)) as a, open(os.path.join(pair_dir, name)) as b:
      assert a.read() == b.read(), name
  if not infer:
    return
  inputs = tmp_path / 'in.jsonl'
  inputs.write_text(''.join(json.dumps({'task': f'demo/{t}', 'inputs': f'review: {i} the '
                                        'price was good and the staff was poor .'}) + '\n'
                            for i, t in enumerate(['topic', 'sentiment', 'topic'] * 3)))
  infer = ['--gin_file=runs/infer_demo.gin', *layout, f'--gin.INFER_INPUT={inputs}',
           '--gin.infer.infer.batch_size=4']
  _one('infer', *infer, f'--gin.INFER_OUTPUT={tmp_path / "infer_one.jsonl"}')
  _two('infer', *infer, f'--gin.INFER_OUTPUT={tmp_path / "infer_two.jsonl"}')
  one_out = (tmp_path / 'infer_one.jsonl').read_text()
  assert len(one_out.splitlines()) == 9
  assert (tmp_path / 'infer_two.jsonl').read_text() == one_out


def test_two_processes_start_from_an_initial_checkpoint_like_one(tmp_path):
  start, one, two = (str(tmp_path / n) for n in ('start', 'one', 'two'))
  _one('train', *DEMO, *HEADS_8, f'--gin.MODEL_DIR={start}', '--gin.TRAIN_STEPS=3', devices=1)
  args = [*DEMO, *HEADS_8, '--gin.NUM_PARTITIONS=8', f'--gin.INITIAL_CHECKPOINT_PATH={start}',
          '--gin.TRAIN_STEPS=6']  # absolute, as in t5x: steps 4 to 6 after the checkpoint's 3
  _one('train', *args, f'--gin.MODEL_DIR={one}')
  _two('train', *args, f'--gin.MODEL_DIR={two}')
  _assert_same_losses(one, two, 6, first=4)
  fresh = _train_losses(start)
  assert _train_losses(one)[4] < fresh[1]  # it did start from the trained weights


def test_sigterm_to_both_processes_saves_one_step_and_a_rerun_continues(tmp_path):
  full, cut = str(tmp_path / 'full'), str(tmp_path / 'cut')
  steps = 40
  args = [*DEMO, f'--gin.TRAIN_STEPS={steps}', '--gin.train.train.save_every_steps=1000',
          '--gin.NUM_PARTITIONS=2', '--gin.train.train.input_shards=2',
          '--gin.network.HyperPromptConfig.dropout_rate=0.1']
  procs = _start_pair('train', [*args, f'--gin.MODEL_DIR={cut}'])
  deadline = time.time() + 300
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(os.path.join(cut, 'metrics.jsonl')) and len(_train_losses(cut)) >= 3:
      break
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  _finish(procs, status=128 + signal.SIGTERM)  # interrupted, saved: not "finished"
  saved = _saved_steps(cut)
  assert len(saved) == 1 and 3 <= saved[0] < steps  # one consistent step for both
  _two('train', *args, f'--gin.MODEL_DIR={cut}')
  _one('train', *args, f'--gin.MODEL_DIR={full}')
  a, b = _train_losses(full), _train_losses(cut)
  assert sorted(b) == list(range(1, steps + 1))
  np.testing.assert_allclose([b[s] for s in range(1, steps + 1)],
                             [a[s] for s in range(1, steps + 1)], rtol=1e-4)


def test_restore_reads_only_this_processes_shards(tmp_path):
  """With the model axis across both processes, each holds half of every sharded parameter
  and no process holds a full host copy; the values are the checkpoint's. The same for a
  scanned model, whose stacked layers are built from the checkpoint's layers_<i>, and for the
  restore of eval, infer and analysis (runtime.build(...).restore_params)."""
  start = str(tmp_path / 'start')
  _one('train', *DEMO, *HEADS_8, f'--gin.MODEL_DIR={start}', '--gin.TRAIN_STEPS=3', devices=1)
  address = f'127.0.0.1:{_port()}'
  worker = os.path.join(REPO, 'tests', 'restore_worker.py')
  procs = [subprocess.Popen([sys.executable, worker, start, address, str(i)], env=_env(4),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in (0, 1)]
  results = [json.loads(out.split('RESULT ', 1)[1]) for out in _finish(procs)]
  from hyperprompt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  stored = traverse_util.flatten_dict(checkpoints.load_params(start), sep='/')
  stacked = traverse_util.flatten_dict(checkpoints.load_params(start, scanned=True), sep='/')
  for result in results:
    for layout, expected, stacked_name in (
        ('unscanned', stored, 'encoder/layers_0/mlp/wi_0/kernel'),
        ('scanned', stacked, 'encoder/layers/mlp/wi_0/kernel'),
        ('runtime', stored, 'encoder/layers_0/mlp/wi_0/kernel')):
      assert result[layout]['loaded'] == len(expected)
      arrays = result[layout]['arrays']
      assert sorted(arrays) == sorted(expected)
      split = [n for n, a in arrays.items() if not a['replicated']]
      assert {'token_embedder/embedding', 'decoder/logits_dense/kernel', stacked_name} <= set(split)
      for name in split:
        assert arrays[name]['local_bytes'] * 2 == arrays[name]['full_bytes'], name
      for name, a in arrays.items():
        value = np.asarray(expected[name], np.float64)
        np.testing.assert_allclose(a['sum'], value.sum(), rtol=1e-4, atol=1e-4)
        if layout == 'scanned' and name.startswith(('encoder/layers/', 'decoder/layers/')):
          np.testing.assert_allclose(a['layer_sums'], value.reshape(value.shape[0], -1).sum(-1),
                                     rtol=1e-4, atol=1e-4)  # each layer in its place


_SHARDING_CHECK = '''
import jax
from hyperprompt_jax import gin_utils, models, partitioning
from hyperprompt_jax.network import Transformer
cfg = gin_utils.model_config(['models/demo.gin'])
abstract = models.init_variables_abstract(Transformer(cfg))
for dims in (1, 2):
  specs = partitioning.Partitioner(4, parameter_partitioning_dims=dims).param_shardings(abstract)
  print(dims, tuple(specs['token_embedder']['embedding'].spec),
        tuple(specs['encoder']['layers_0']['mlp']['wi_0']['kernel'].spec))
'''


def test_two_dimensional_parameter_sharding_gives_the_same_losses(tmp_path):
  out = subprocess.run([sys.executable, '-c', _SHARDING_CHECK], env=_env(8), cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  # tuples, not reprs: PartitionSpec's repr differs between jax builds
  assert lines[0] == "1 ('model', None) (None, 'model')"
  assert lines[1] == "2 ('model', 'data') ('data', 'model')"
  one_d, two_d = str(tmp_path / 'one_d'), str(tmp_path / 'two_d')
  args = [*DEMO, '--gin.NUM_PARTITIONS=4', '--gin.TRAIN_STEPS=3']
  _one('train', *args, f'--gin.MODEL_DIR={one_d}')
  _one('train', *args, f'--gin.MODEL_DIR={two_d}',
       '--gin.train.train.parameter_partitioning_dims=2')
  _assert_same_losses(one_d, two_d, 3)


def test_periodic_evaluation_in_two_processes_gives_one_process_records(tmp_path):
  """EVAL_EVERY_STEPS > 0 with the batch data parallel over the processes: the same losses,
  and the same evaluation records (scores, split, examples) as one process. The two-process
  run is preempted (SIGTERM to both) during its evaluation: both stop at the same eval batch,
  save step 2 and exit 143; the rerun evaluates step 2 first, so nothing is lost."""
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  args = [*DEMO, '--gin.NUM_PARTITIONS=2', '--gin.train.train.input_shards=2',
          '--gin.TRAIN_STEPS=2', '--gin.EVAL_EVERY_STEPS=2',
          '--gin.train.train.eval_max_examples=40', '--gin.train.train.eval_batch_size=8',
          '--gin.train.train.report_every_seconds=0']
  _one('train', *args, f'--gin.MODEL_DIR={one}')
  procs = _start_pair('train', [*args, f'--gin.MODEL_DIR={two}'])
  seen = []
  for line in procs[0].stderr:  # the evaluation starts right after step 2's progress line
    seen.append(line)
    if 'step 2/2' in line:
      for p in procs:
        p.send_signal(signal.SIGTERM)
      break
  began = time.time()
  outs = [p.communicate(timeout=300) for p in procs]
  err = ''.join(seen) + outs[0][1]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, err[-3000:]
  assert time.time() - began < 60 and 'SIGTERM during the evaluation of step 2' in err, err
  assert _saved_steps(two) == [2]
  _two('train', *args, f'--gin.MODEL_DIR={two}')
  _assert_same_losses(one, two, 2)
  records = lambda d: [r for r in map(json.loads, open(os.path.join(d, 'training_eval',
                                                                     'metrics.jsonl')))]
  a, b = records(one), records(two)
  assert [r['step'] for r in a] == [r['step'] for r in b] == [2]  # once, by process 0
  assert a[0].keys() == b[0].keys() and a[0]['examples'] == b[0]['examples']
  scores = sorted(k for k in a[0] if k.startswith('eval/'))
  np.testing.assert_allclose([b[0][k] for k in scores], [a[0][k] for k in scores], atol=1e-6)
