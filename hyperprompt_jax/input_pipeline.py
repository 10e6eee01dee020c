"""The trainer's seqio input pipeline: deterministic, per-host sharded, checkpointable."""

import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
import seqio
import tensorflow as tf

import hyperprompt_tasks
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter
from hyperprompt_tasks.vocab import check_vocabulary


def shards_for_rows(rows: Tuple[int, int], batch_size: int, num_shards: int) -> List[int]:
  """The input shards that fill global batch rows [start, stop): shard i fills rows
  [i * batch_size / num_shards, (i + 1) * batch_size / num_shards)."""
  if batch_size % num_shards:
    raise ValueError(f'BATCH_SIZE={batch_size} must divide evenly into {num_shards} input '
                     'shards: change BATCH_SIZE or train.input_shards.')
  per_shard = batch_size // num_shards
  start, stop = rows
  if start % per_shard or stop % per_shard:
    raise ValueError(f'This process holds batch rows [{start}, {stop}), which {num_shards} '
                     f'input shards of {per_shard} rows do not tile: make train.input_shards '
                     'a multiple of the number of data-parallel process groups.')
  return list(range(start // per_shard, stop // per_shard))


def train_datasets(mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
                   batch_size: int, seed: int, pack: bool = True, max_segments: int = 8,
                   use_cached: bool = False, num_shards: int = 1,
                   shard_indices: Sequence[int] = (0,)) -> Dict[int, tf.data.Dataset]:
  """{shard: its infinite, shuffled, batched model features} for the given input shards:
  shard i fills rows [i, i + 1) * batch_size / num_shards of every global batch. The global
  batch depends on `num_shards` only, never on how many processes read it: shard i is the
  same data in any run."""
  provider = hyperprompt_tasks.get_mixture_or_task(mixture_or_task_name)
  check_sources(mixture_or_task_name)
  if use_cached:
    missing = [t.name for t in hyperprompt_tasks.tasks_of(mixture_or_task_name)
               if t.cache_dir is None]
    if missing:
      raise ValueError(f'USE_CACHED_TASKS=True but {missing[0]} (and {len(missing) - 1} more) '
                       f'has no seqio cache in {seqio.utils.get_global_cache_dirs()}: cache the '
                       'tasks (README "Preparing the data") and pass SEQIO_CACHE_DIRS.')
  converter = TaskIdEncDecFeatureConverter(pack=pack, max_segments=max_segments)
  out = {}
  for index in shard_indices:
    ds = provider.get_dataset(task_feature_lengths, split='train', shuffle=True, seed=seed,
                              num_epochs=None, use_cached=use_cached,
                              shard_info=seqio.ShardInfo(index=index, num_shards=num_shards))
    out[index] = converter(ds, task_feature_lengths).batch(
        batch_size // num_shards, drop_remainder=True).prefetch(2)
  return out


def train_dataset(*args, **kwargs) -> tf.data.Dataset:
  """train_datasets' shards as one dataset of this process's rows (shard after shard)."""
  parts = list(train_datasets(*args, **kwargs).values())
  if len(parts) == 1:
    return parts[0]
  joined = tf.data.Dataset.zip(tuple(parts))
  return joined.map(lambda *xs: {k: tf.concat([x[k] for x in xs], 0) for k in xs[0]})


class ShardedInput:
  """The batches this process feeds: its shards of the global batch, each read by its own
  tf.data iterator, concatenated in shard order. Each shard's exact position is saved on its
  own (input_state/step_<step>/shard_<i>, beside layout.json: the number of shards and the
  global batch), so a resumed run sees the same batches as an uninterrupted one on any
  number of processes, as long as the number of shards is the same (train.input_shards).

  writes: the shards whose position this process saves (each shard by one process, the
  first that reads it)."""

  def __init__(self, datasets: Dict[int, tf.data.Dataset], num_shards: int, batch_size: int,
               writes: Sequence[int] = ()):
    self.shards = sorted(datasets)
    self._iterators = {i: iter(datasets[i]) for i in self.shards}
    self._ckpts = {i: tf.train.Checkpoint(iterator=it) for i, it in self._iterators.items()}
    self.layout = {'num_shards': int(num_shards), 'batch_size': int(batch_size)}
    self.writes = sorted(writes)

  def __next__(self) -> Dict[str, np.ndarray]:
    parts = [next(self._iterators[i]) for i in self.shards]
    return {k: np.concatenate([p[k].numpy() for p in parts]) if len(parts) > 1
            else parts[0][k].numpy() for k in parts[0]}

  def __iter__(self) -> Iterator:
    return self

  def save(self, directory: str, step: int) -> None:
    base = os.path.join(directory, f'step_{step}')
    tf.io.gfile.makedirs(base)
    for i in self.writes:
      self._ckpts[i].write(os.path.join(base, f'shard_{i}'))
    if jax.process_index() == 0:
      with tf.io.gfile.GFile(os.path.join(base, 'layout.json'), 'w') as f:
        f.write(json.dumps(self.layout))

  def restore(self, directory: str, step: int) -> Optional[str]:
    """Restores this process's shards' positions saved with `step`; returns None, or why
    the input restarts from its beginning instead (never a partial or misaligned restore)."""
    base = os.path.join(directory, f'step_{step}')
    path = os.path.join(base, 'layout.json')
    if not tf.io.gfile.exists(path):
      if tf.io.gfile.glob(os.path.join(base, 'host_*.index')):
        return 'its position was saved per process by an earlier version'
      return f'no input position was saved with step {step}'
    with tf.io.gfile.GFile(path) as f:
      saved = json.load(f)
    if saved != self.layout:
      return (f'it was saved as {saved["num_shards"]} shard(s) of a {saved["batch_size"]}-row '
              f'batch and this run reads {self.layout["num_shards"]} of '
              f'{self.layout["batch_size"]} (bind train.train.input_shards='
              f'{saved["num_shards"]} and the same BATCH_SIZE to continue exactly)')
    missing = [i for i in self.shards
               if not tf.io.gfile.exists(os.path.join(base, f'shard_{i}.index'))]
    if missing:
      return f'the position of input shard {missing[0]} is missing from {base}'
    for i in self.shards:
      self._ckpts[i].read(os.path.join(base, f'shard_{i}')).assert_consumed()
    return None


def prune_input_states(directory: str, keep_steps) -> None:
  """Removes saved input positions of checkpoints that no longer exist."""
  if not tf.io.gfile.isdir(directory):
    return
  for name in tf.io.gfile.listdir(directory):
    name = name.rstrip('/')
    if name.startswith('step_') and int(name[5:]) not in keep_steps:
      tf.io.gfile.rmtree(os.path.join(directory, name))


def check_sources(mixture_or_task_name: str) -> None:
  """The tasks' vocabularies can be read (one-line error naming HYPERPROMPT_VOCAB else)."""
  for task in hyperprompt_tasks.tasks_of(mixture_or_task_name):
    for feature in task.output_features.values():
      check_vocabulary(feature.vocabulary)


def eval_examples(task: seqio.Task, task_feature_lengths: Dict[str, int], split: str,
                  max_examples: Optional[int] = None):
  """A task's evaluation examples as numpy dicts (all features, for postprocessing)."""
  check_sources(task.name)
  ds = task.get_dataset(task_feature_lengths, split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  if max_examples:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())
