"""The trainer: jit-compiled, sharded train steps over a ('data', 'model') mesh.

The only place that runs steps. It composes the network, the seqio tasks and the
partitioning rules; `train.py` / `eval.py` / `infer.py` configure it with gin.
"""

import contextlib
import dataclasses
import re
from typing import Dict, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from flax.linen import partitioning as nn_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from hyperprompt_jax import partitioning
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer
from hyperprompt_jax.task_ids import token_tasks

BATCH_KEYS_PACKED = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                     'decoder_positions')
# Parameters of the task conditioning (everything that is not T5): see options/freeze_backbone.gin.
CONDITIONING_PARAMS_REGEX = r'^(hyperprompt|encoder_hyperprompt|decoder_hyperprompt|input_prompts|hyperformer)/|/adapter/'
gin.constant('hyperprompt_jax.CONDITIONING_PARAMS', CONDITIONING_PARAMS_REGEX)


def cross_entropy_with_z_loss(logits, targets, z_loss: float):
  """Per-token cross entropy plus T5's z-loss (z_loss * log(Z)^2): [batch, len]."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [batch, len]
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit + z_loss * jnp.square(log_z)


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


def make_optimizer(learning_rate: float, params, trainable_regex='.*',
                   frozen_regex=None) -> optax.GradientTransformation:
  """optax Adafactor with T5's defaults (decay 0.8, update clipping 1.0, parameter scaling);
  frozen parameters get no update at all."""
  adafactor = optax.adafactor(learning_rate=learning_rate, decay_rate=0.8,
                              clipping_threshold=1.0, multiply_by_parameter_scale=True,
                              momentum=None, min_dim_size_to_factor=128, eps=1e-30)
  mask = trainable_mask(params, trainable_regex, frozen_regex)
  labels = jax.tree.map(lambda t: 'train' if t else 'freeze', mask)
  return optax.multi_transform({'train': adafactor, 'freeze': optax.set_to_zero()}, labels)


@dataclasses.dataclass
class Partitioner:
  """Mesh, logical rules and the shardings derived from them."""
  num_partitions: int = 1

  def __post_init__(self):
    self.mesh = partitioning.create_mesh(self.num_partitions)
    self.rules = partitioning.logical_axis_rules()

  def context(self):
    """Mesh and logical rules for tracing (activation constraints use both)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn_partitioning.axis_rules(self.rules))
    return stack

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def batch_sharding(self, ndim: int):
    return NamedSharding(self.mesh, P('data', *([None] * (ndim - 1))))

  def param_shardings(self, abstract_variables):
    specs = partitioning.params_logical_specs(abstract_variables)
    return partitioning.logical_to_sharding(specs, self.mesh, self.rules)

  def opt_state_shardings(self, abstract_opt_state, params, param_shardings):
    """Optimizer leaves shaped like their parameter share its sharding; others replicate."""
    by_path = {tuple(k): (v.shape, s) for (k, v), s in zip(
        traverse_util.flatten_dict(params).items(),
        traverse_util.flatten_dict(param_shardings).values())}

    def pick(path, leaf):
      keys = tuple(getattr(k, 'key', None) for k in path)
      keys = tuple(k for k in keys if isinstance(k, str))
      for n in range(len(keys)):
        hit = by_path.get(keys[n:])
        if hit and tuple(hit[0]) == tuple(getattr(leaf, 'shape', ())):
          return hit[1]
      return self.replicated
    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)

  def shard_batch(self, batch: Dict[str, np.ndarray]):
    """Host-local numpy batch -> global arrays sharded over 'data'."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding(v.ndim), v)
            for k, v in batch.items()}


def model_inputs(batch):
  """Positional model arguments of a feature-converted batch."""
  packed = [batch.get(k) for k in BATCH_KEYS_PACKED]
  return (batch['encoder_input_tokens'], batch['decoder_input_tokens'],
          batch['decoder_target_tokens'], *packed)


def loss_and_aux(model: Transformer, params, batch, rng, num_tasks: int, z_loss: float,
                 enable_dropout: bool = True):
  """Summed token loss and per-task sums/counts (for per-task losses)."""
  cfg = model.config
  logits = model.apply({'params': params}, *model_inputs(batch), enable_dropout=enable_dropout,
                       rngs={'dropout': rng} if enable_dropout else None,
                       task_ids=batch['task_ids'] if cfg.is_conditioned else None)
  targets = batch['decoder_target_tokens']
  weights = batch['decoder_loss_weights'].astype(jnp.float32)  # [batch, len]
  token_loss = cross_entropy_with_z_loss(logits, targets, z_loss) * weights
  tasks = token_tasks(batch['task_ids'], batch.get('decoder_segment_ids'), targets.shape[1])
  onehot = jax.nn.one_hot(tasks, num_tasks) * weights[..., None]  # [batch, len, tasks]
  aux = {'loss_sum': token_loss.sum(), 'tokens': weights.sum(),
         'task_loss_sum': jnp.einsum('bl,blt->t', token_loss, onehot),
         'task_tokens': onehot.sum((0, 1))}
  return aux['loss_sum'], aux


def make_train_step(model: Transformer, optimizer, num_tasks: int, dropout_seed: int = 0,
                    z_loss: float = 1e-4, num_microbatches: int = 1):
  """state, batch -> new state, metrics. Dropout keys are folded from the step number, so a
  resumed run draws the same randomness as an uninterrupted one."""
  grad_fn = jax.grad(lambda p, b, r: loss_and_aux(model, p, b, r, num_tasks, z_loss),
                     has_aux=True)

  def step_fn(state, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(dropout_seed), state['step'])
    if num_microbatches == 1:
      grads, aux = grad_fn(state['params'], batch, rng)
    else:
      micro = jax.tree.map(
          lambda x: x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:]),
          batch)

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
    metrics = {'loss': aux['loss_sum'] / tokens,
               'task_loss': aux['task_loss_sum'] / jnp.maximum(aux['task_tokens'], 1.0),
               'task_tokens': aux['task_tokens']}
    return {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}, metrics
  return step_fn


def check_num_tasks(config: HyperPromptConfig, task_ids) -> None:
  if config.is_conditioned and task_ids and max(task_ids) >= config.num_tasks:
    raise ValueError(f'The mixture uses task ids up to {max(task_ids)} but the model has '
                     f'num_tasks={config.num_tasks}: set network.HyperPromptConfig.num_tasks '
                     f'to at least {max(task_ids) + 1}.')


def init_fn(model: Transformer):
  """rng -> all variables (params and params_axes), from dummy inputs of any length."""
  x = jnp.ones((1, 4), jnp.int32)
  return lambda rng: model.init(rng, x, x, x, enable_dropout=False)


def init_variables_abstract(model: Transformer):
  return jax.eval_shape(init_fn(model), jax.random.PRNGKey(0))


def init_params(model: Transformer, seed: int, shardings):
  init = init_fn(model)
  return jax.jit(lambda r: init(r)['params'], out_shardings=shardings)(jax.random.PRNGKey(seed))
