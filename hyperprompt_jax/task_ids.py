"""Task ids at the boundary: validation, per-token tasks, and gathers that never clamp.

`task_ids` is int32 `[batch]` (one example per row) or `[batch, max_segments]` for packed rows,
where entry s is the task of segment s+1 and unused slots hold 0.
"""

import jax
import jax.numpy as jnp
import numpy as np


def check_task_ids(task_ids, num_tasks: int, where: str = 'task_ids') -> None:
  """Rejects concrete ids outside [0, num_tasks); traced values pass (jit, eval_shape)."""
  if task_ids is None or isinstance(task_ids, jax.core.Tracer):
    return
  ids = np.asarray(task_ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f'{where} must hold integers, got dtype {ids.dtype}; pass int32 task ids.')
  if ids.ndim not in (1, 2):
    raise ValueError(f'{where} must be [batch] or [batch, max_segments], got shape {ids.shape}.')
  bad = ids[(ids < 0) | (ids >= num_tasks)]
  if bad.size:
    raise ValueError(
        f'{where} holds {int(bad.flat[0])}, outside [0, {num_tasks}): raise '
        f'HyperPromptConfig.num_tasks to at least {int(ids.max()) + 1} or fix the task table.')


def token_tasks(task_ids, segment_ids, length: int):
  """Task of every token: [batch, length].

  Unpacked ids broadcast over the row; packed ids are looked up by segment (segment s+1 ->
  task_ids[:, s]); padding tokens (segment 0) get slot 0, which is harmless since padding
  is masked everywhere.
  """
  if task_ids.ndim == 1:
    return jnp.broadcast_to(task_ids[:, None], (task_ids.shape[0], length))
  if segment_ids is None:
    if task_ids.shape[1] != 1:
      raise ValueError('Packed task_ids [batch, max_segments] need segment ids; pass '
                       'encoder_segment_ids/decoder_segment_ids or unpacked [batch] task_ids.')
    return jnp.broadcast_to(task_ids[:, :1], (task_ids.shape[0], length))
  slot = jnp.clip(segment_ids.astype(jnp.int32) - 1, 0, task_ids.shape[1] - 1)
  return jnp.take_along_axis(task_ids, slot, axis=1)


def gather_tasks(table, ids):
  """table[ids] along axis 0, with NaN rows for ids outside [0, len(table)).

  Plain jnp indexing clamps (or wraps negative ids), which would silently hand an example
  another task's parameters; NaN makes such a step fail loudly instead.
  """
  num = table.shape[0]
  valid = (ids >= 0) & (ids < num)
  rows = jnp.take(table, jnp.clip(ids, 0, num - 1), axis=0)
  valid = valid.reshape(valid.shape + (1,) * (rows.ndim - valid.ndim))
  return jnp.where(valid, rows, jnp.asarray(jnp.nan, rows.dtype))


def task_one_hot(ids, num_tasks: int, dtype):
  """One-hot task selector [..., num_tasks]; an invalid id gives a NaN row, never zeros."""
  valid = (ids >= 0) & (ids < num_tasks)
  one_hot = jax.nn.one_hot(ids, num_tasks, dtype=dtype)
  return jnp.where(valid[..., None], one_hot, jnp.asarray(jnp.nan, dtype))
