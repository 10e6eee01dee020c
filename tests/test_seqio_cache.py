"""seqio caching as the README gives it: seqio's own cache_tasks_main (Beam's DirectRunner)
caches the demo tasks, the cache holds no task ids (they are added after
CacheDatasetPlaceholder, from the task table, at read time), and the trainer trains from
the cache with USE_CACHED_TASKS=True."""

import glob
import json
import os
import subprocess
import sys

import pytest
import seqio

import hyperprompt_tasks
from tests.test_training import _demo, _env, _train_losses

pytest.importorskip('apache_beam')


@pytest.fixture(scope='module')
def demo_cache(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('seqio_cache'))
  tasks = [t.name for t in hyperprompt_tasks.tasks_of('hyperprompt_demo')]
  proc = subprocess.run(
      [sys.executable, '-m', 'seqio.scripts.cache_tasks_main',
       '--module_import=hyperprompt_tasks', f'--tasks={",".join(tasks)}',
       f'--output_cache_dir={cache}', '--min_shards=1'],
      env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return cache


def test_cached_tasks_store_no_task_ids_and_read_the_table_s(demo_cache):
  infos = glob.glob(os.path.join(demo_cache, '*', 'info.*.json'))
  assert len(infos) == 2 * len(hyperprompt_tasks.task_table.DEMO)  # train and validation
  for path in infos:
    with open(path) as f:
      features = json.load(f)['features']
    assert 'inputs' in features and 'task_ids' not in features, path
  seqio.add_global_cache_dirs([demo_cache])
  try:
    for task in hyperprompt_tasks.tasks_of('hyperprompt_demo'):
      assert task.cache_dir  # read from the cache, not regenerated
      ds = task.get_dataset({'inputs': 64, 'targets': 8}, split='train', shuffle=False,
                            use_cached=True)
      ids = {int(ex['task_ids'][0]) for ex in ds.take(20).as_numpy_iterator()}
      assert ids == {hyperprompt_tasks.TASK_IDS[task.name]}, task.name
  finally:
    seqio.set_global_cache_dirs([])


def test_trainer_trains_from_the_seqio_cache(demo_cache, tmp_path):
  run = str(tmp_path / 'run')
  _demo(run, 2, '--gin.USE_CACHED_TASKS=True', f'--gin.SEQIO_CACHE_DIRS=["{demo_cache}"]')
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    first = json.loads(f.readline())
  # Every task of the mixture is seen under its own id (per-task losses are keyed by the
  # task the id names in the registry).
  seen = {k[len('loss/'):] for k in first if k.startswith('loss/')}
  assert seen and seen <= set(hyperprompt_tasks.task_id_map('hyperprompt_demo'))
  assert sorted(_train_losses(run)) == [1, 2]
