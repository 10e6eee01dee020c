"""The trainer's seqio input pipeline: deterministic, per-host sharded, checkpointable."""

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


def train_dataset(mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
                  batch_size: int, seed: int, pack: bool = True, max_segments: int = 8,
                  use_cached: bool = False, num_shards: int = 1,
                  shard_indices: Sequence[int] = (0,)) -> tf.data.Dataset:
  """Infinite, shuffled, batched model features of the given input shards (this process's
  rows of the global batch, shard after shard). The global batch depends on `num_shards`
  only, never on how many processes read it: shard i is the same data in any run."""
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
  parts = []
  for index in shard_indices:
    ds = provider.get_dataset(task_feature_lengths, split='train', shuffle=True, seed=seed,
                              num_epochs=None, use_cached=use_cached,
                              shard_info=seqio.ShardInfo(index=index, num_shards=num_shards))
    parts.append(converter(ds, task_feature_lengths).batch(batch_size // num_shards,
                                                           drop_remainder=True))
  if len(parts) == 1:
    return parts[0].prefetch(2)
  joined = tf.data.Dataset.zip(tuple(parts))
  return joined.map(lambda *xs: {k: tf.concat([x[k] for x in xs], 0) for k in xs[0]}).prefetch(2)


class CheckpointableIterator:
  """A tf.data iterator whose exact position is saved and restored with tf.train.Checkpoint,
  so a resumed run sees the same batches as an uninterrupted one."""

  def __init__(self, ds: tf.data.Dataset):
    self._iterator = iter(ds)
    self._ckpt = tf.train.Checkpoint(iterator=self._iterator)

  def __next__(self) -> Dict[str, np.ndarray]:
    return jax.tree.map(lambda t: t.numpy(), next(self._iterator))

  def __iter__(self) -> Iterator:
    return self

  def save(self, directory: str, step: int) -> None:
    path = os.path.join(directory, f'step_{step}', f'host_{jax.process_index()}')
    tf.io.gfile.makedirs(os.path.dirname(path))
    self._ckpt.write(path)

  def restore(self, directory: str, step: int) -> bool:
    path = os.path.join(directory, f'step_{step}', f'host_{jax.process_index()}')
    if not tf.io.gfile.exists(path + '.index'):
      return False
    self._ckpt.read(path).assert_consumed()
    return True


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
