"""The optimizer and the train step: Adafactor with frozen-parameter masks, and a jit-able
`state, batch -> state, metrics` with microbatching. The loss lives in `models`; the loop
that runs steps (input, checkpoints, logging) in the `train` command.
"""

import re
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from hyperprompt_jax import models, scan_layout
from hyperprompt_jax.layers import with_sharding_constraint
from hyperprompt_jax.network import Transformer


def trainable_mask(params, trainable_regex: str = '.*', frozen_regex: Optional[str] = None):
  """True for parameters that train: path matches `trainable_regex` and not `frozen_regex`."""
  flat = traverse_util.flatten_dict(params)
  keep = {}
  for path in flat:
    name = '/'.join(path)
    keep[path] = bool(re.search(trainable_regex, name)) and not (
        frozen_regex and re.search(frozen_regex, name))
  if not any(keep.values()):
    raise ValueError(f'No parameter matches trainable_regex={trainable_regex!r}: fix the '
                     'regex in gin (paths look like encoder/layers_0/attention/query/kernel).')
  return traverse_util.unflatten_dict(keep)


def new_task_rows_only(params, first_new_task: int, task_axes: Dict[str, int]
                       ) -> optax.GradientTransformation:
  """Zeroes every update except the rows >= first_new_task of task-indexed parameters
  (`task_axes`: {name: task axis}): the old tasks' rows and every shared parameter,
  hypernetworks included, stay bit for bit."""
  flat = traverse_util.flatten_dict(params)
  axes = traverse_util.unflatten_dict({k: task_axes.get('/'.join(k), -1) for k in flat})

  def keep(update, axis):
    if axis < 0:
      return jnp.zeros_like(update)
    rows = jnp.arange(update.shape[axis]) >= first_new_task
    return jnp.where(rows.reshape([-1 if i == axis else 1 for i in range(update.ndim)]),
                     update, jnp.zeros_like(update))

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(keep, updates, axes), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied to each layer of scanned parameters on its own (vmapped over their
  leading 'layers' axis), as t5x's Adafactor treats that axis (FactorDim.BATCH): Adafactor's
  factored moments, parameter-scale RMS and update clipping are per layer, so a scanned run
  trains exactly like an unscanned one."""
  return optax.GradientTransformation(
      lambda params: jax.vmap(inner.init)(params),
      lambda updates, state, params=None: jax.vmap(inner.update)(updates, state, params))


def make_optimizer(learning_rate: float, params, trainable_regex='.*', frozen_regex=None,
                   first_new_task: Optional[int] = None,
                   task_axes: Optional[Dict[str, int]] = None,
                   parameter_scale: bool = True,
                   weight_decay_rate: Optional[float] = None) -> optax.GradientTransformation:
  """optax Adafactor with T5's defaults (decay 0.8, update clipping 1.0, parameter scaling);
  frozen parameters get no update at all. With `first_new_task`, only the new tasks' rows
  of the task-indexed parameters train (see new_task_rows_only). parameter_scale=False and
  weight_decay_rate=1e-5 are Prompt-Tuning's settings (google-research/prompt-tuning).
  Scanned layers (`encoder/layers/...`) are updated layer by layer (`per_layer`)."""
  adafactor = optax.adafactor(learning_rate=learning_rate, decay_rate=0.8,
                              clipping_threshold=1.0, multiply_by_parameter_scale=parameter_scale,
                              momentum=None, min_dim_size_to_factor=128, eps=1e-30,
                              weight_decay_rate=weight_decay_rate)
  mask = trainable_mask(params, trainable_regex, frozen_regex)
  flat = traverse_util.flatten_dict(mask)
  labels = traverse_util.unflatten_dict({
      path: ('freeze' if not train else
             'train_per_layer' if scan_layout.is_scanned_path(path) else 'train')
      for path, train in flat.items()})
  transforms = {'train': adafactor, 'freeze': optax.set_to_zero()}
  if 'train_per_layer' in jax.tree.leaves(labels):
    transforms['train_per_layer'] = per_layer(adafactor)
  optimizer = optax.multi_transform(transforms, labels)
  if first_new_task is None:
    return optimizer
  return optax.chain(optimizer, new_task_rows_only(params, first_new_task, task_axes or {}))


def split_microbatches(x, num_microbatches: int):
  """[batch, ...] -> [num_microbatches, batch / num_microbatches, ...], microbatch i holding
  rows i, i + n, i + 2n, ...: every data shard gives each microbatch an equal share of its own
  rows, so the split moves no data between devices (a contiguous split would put microbatch
  0 on the first shards only, which XLA's SPMD partitioner rejects on large meshes)."""
  rows = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
  rows = jnp.swapaxes(rows, 0, 1)
  return with_sharding_constraint(rows, (None, 'batch') + (None,) * (x.ndim - 1))


def make_train_step(model: Transformer, optimizer, num_tasks: int, dropout_seed: int = 0,
                    z_loss: float = 1e-4, num_microbatches: int = 1):
  """state, batch -> new state, metrics. Dropout keys are folded from the step number, so a
  resumed run draws the same randomness as an uninterrupted one."""
  grad_fn = jax.grad(lambda p, b, r: models.loss_and_aux(model, p, b, r, num_tasks, z_loss),
                     has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state['step'])
    if num_microbatches == 1:
      grads, aux = grad_fn(state['params'], batch, rng)
    else:
      micro = jax.tree.map(lambda x: split_microbatches(x, num_microbatches), batch)

      def accumulate(carry, inputs):
        i, mb = inputs
        g, a = grad_fn(state['params'], mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, a)), None
      zeros = jax.tree.map(jnp.zeros_like, (state['params'], jax.eval_shape(
          lambda: grad_fn(state['params'], jax.tree.map(lambda x: x[0], micro), rng)[1])))
      (grads, aux), _ = jax.lax.scan(accumulate, zeros,
                                     (jnp.arange(num_microbatches), micro))
    tokens = jnp.maximum(aux['tokens'], 1.0)
    grads = jax.tree.map(lambda g: g / tokens, grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return ({'step': state['step'] + 1, 'params': params, 'opt_state': opt_state},
            models.metrics_of(aux))
  return step_fn
