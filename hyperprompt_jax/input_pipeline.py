"""The trainer's seqio input pipeline: deterministic, per-host sharded, checkpointable."""

import os
from typing import Dict, Iterator, Optional

import jax
import numpy as np
import seqio
import tensorflow as tf

import hyperprompt_tasks
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter


def train_dataset(mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
                  batch_size: int, seed: int, pack: bool = True, max_segments: int = 8,
                  use_cached: bool = False) -> tf.data.Dataset:
  """Infinite, shuffled, batched model features; each host reads only its own shard."""
  provider = hyperprompt_tasks.get_mixture_or_task(mixture_or_task_name)
  num_hosts = jax.process_count()
  if batch_size % num_hosts:
    raise ValueError(f'BATCH_SIZE={batch_size} must divide evenly over {num_hosts} hosts.')
  shard = seqio.ShardInfo(index=jax.process_index(), num_shards=num_hosts)
  ds = provider.get_dataset(task_feature_lengths, split='train', shuffle=True, seed=seed,
                            num_epochs=None, shard_info=shard, use_cached=use_cached)
  converter = TaskIdEncDecFeatureConverter(pack=pack, max_segments=max_segments)
  ds = converter(ds, task_feature_lengths)
  return ds.batch(batch_size // num_hosts, drop_remainder=True).prefetch(2)


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


def eval_examples(task: seqio.Task, task_feature_lengths: Dict[str, int], split: str,
                  max_examples: Optional[int] = None):
  """A task's evaluation examples as numpy dicts (all features, for postprocessing)."""
  ds = task.get_dataset(task_feature_lengths, split=split, shuffle=False, num_epochs=1,
                        use_cached=False)
  if max_examples:
    ds = ds.take(max_examples)
  return list(ds.as_numpy_iterator())
