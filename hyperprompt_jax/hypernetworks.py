"""Task conditioning: hyper-prompt generators, input prompts and (hyper-)adapters.

Everything here is computed once per task and layer per step — for all `num_tasks` tasks,
which bounds it by the task table, never by the batch — and then gathered per example.

Notation (DESIGN.md): T tasks, l prompt length, d emb_dim, h heads, d_h head_dim,
b hypernetwork bottleneck, t' task/layer embedding size, t layer-aware task embedding size.
"""

from typing import NamedTuple

import jax.numpy as jnp
from flax import linen as nn

from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.layers import make_attention_mask, param_with_axes, with_sharding_constraint
from hyperprompt_jax.task_ids import gather_tasks, task_one_hot


def _fan_in(in_axis, out_axis, batch_axis=()):
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', in_axis=in_axis,
                                          out_axis=out_axis, batch_axis=batch_axis)


class TaskProjector(nn.Module):
  """h_t: [k_task ; z_layer] (2t') -> dense -> ReLU -> dense -> I (t)."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self, task_embedding, layer_embedding):
    """task_embedding [T, t'], layer_embedding [M, t'] -> I [M, T, t]."""
    cfg = self.config
    t_in, t = cfg.task_embedding_dim, cfg.layer_task_embedding_dim
    shape = (layer_embedding.shape[0], task_embedding.shape[0], t_in)
    x = jnp.concatenate([jnp.broadcast_to(task_embedding[None], shape),
                         jnp.broadcast_to(layer_embedding[:, None], shape)], axis=-1)  # [M, T, 2t']
    w0 = param_with_axes('hidden_kernel', _fan_in(0, 1), (2 * t_in, t), jnp.float32,
                         axes=('task_embed', 'hyper_hidden'))
    b0 = param_with_axes('hidden_bias', nn.initializers.zeros, (t,), jnp.float32,
                         axes=('hyper_hidden',))
    w1 = param_with_axes('out_kernel', _fan_in(0, 1), (t, t), jnp.float32,
                         axes=('hyper_hidden', 'hyper_embed'))
    b1 = param_with_axes('out_bias', nn.initializers.zeros, (t,), jnp.float32,
                         axes=('hyper_embed',))
    dt = cfg.dtype
    h = nn.relu(x.astype(dt) @ w0.astype(dt) + b0.astype(dt))  # [M, T, t]
    return h @ w1.astype(dt) + b1.astype(dt)  # [M, T, t]


class HyperPromptGenerator(nn.Module):
  """Generates the key and value hyper-prompts of each prompted layer for every task.

  'share': global prompts P [T, l, d]; local hypernetworks D^m [d, b], U^m [b, h*d_h]
  'sep':   global prompts P; task-specific local hypernetworks D^m_tau, U^m_tau
  'global': global prompts P, task embeddings k [T, t'], layer embeddings z [M, t'];
           I^m_tau = h_t([k_tau; z_m]), D^m_tau = W^D I^m_tau, U^m_tau = W^U I^m_tau.
  """
  config: HyperPromptConfig
  num_layers: int

  def setup(self):
    cfg = self.config
    T, l, d = cfg.num_tasks, cfg.prompt_length, cfg.emb_dim
    b, hd, M = cfg.hyper_bottleneck, cfg.num_heads * cfg.head_dim, self.num_layers
    self.prompts = param_with_axes('prompts', nn.initializers.normal(1.0), (T, l, d),
                                   jnp.float32, axes=('tasks', 'prompt', 'embed'))
    if cfg.variant == 'share':
      shapes = {'down': ((M, d, b), ('layers', 'embed', 'hyper_bottleneck'), _fan_in(1, 2, 0)),
                'up': ((M, b, hd), ('layers', 'hyper_bottleneck', 'joined_kv'),
                       _fan_in(1, 2, 0))}
    elif cfg.variant == 'sep':
      shapes = {
          'down': ((M, T, d, b), ('layers', 'tasks', 'embed', 'hyper_bottleneck'),
                   _fan_in(2, 3, (0, 1))),
          'up': ((M, T, b, hd), ('layers', 'tasks', 'hyper_bottleneck', 'joined_kv'),
                 _fan_in(2, 3, (0, 1)))}
    else:  # 'global': the local hypernetworks are generated from I^m_tau.
      t_in, t = cfg.task_embedding_dim, cfg.layer_task_embedding_dim
      self.task_embedding = param_with_axes('task_embedding', nn.initializers.normal(1.0),
                                            (T, t_in), jnp.float32, axes=('tasks', 'task_embed'))
      self.layer_embedding = param_with_axes('layer_embedding', nn.initializers.normal(1.0),
                                             (M, t_in), jnp.float32, axes=('layers', 'task_embed'))
      self.projector = TaskProjector(cfg, name='task_projector')
      shapes = {
          'down': ((t, d, b), ('hyper_embed', 'embed', 'hyper_bottleneck'), _fan_in((0, 1), 2)),
          'up': ((t, b, hd), ('hyper_embed', 'hyper_bottleneck', 'joined_kv'),
                 _fan_in((0, 1), 2))}
    weights = {}
    for kind in ('key', 'value'):
      for part, (shape, axes, init) in shapes.items():
        name = f'{kind}_{part}' if cfg.variant != 'global' else f'{kind}_{part}_generator'
        weights[f'{kind}_{part}'] = param_with_axes(name, init, shape, jnp.float32, axes=axes)
    self.weights = weights

  def __call__(self, start: int, count: int):
    """Prompts of prompted layers start .. start+count-1 (0-based across stacks), all at once
    (one batched computation per stack, not one per layer): two [count, T, l, h, d_h]."""
    cfg = self.config
    dt = cfg.dtype
    layers = slice(start, start + count)
    P = self.prompts.astype(dt)  # [T, l, d]
    w = {k: v.astype(dt) for k, v in self.weights.items()}
    I = self.layer_task_embedding(layers) if cfg.variant == 'global' else None  # [M, T, t]
    out = []
    for kind in ('key', 'value'):
      down, up = w[f'{kind}_down'], w[f'{kind}_up']
      if cfg.variant == 'share':
        hidden = nn.relu(jnp.einsum('tld,mdb->mtlb', P, down[layers]))  # [M, T, l, b]
        prompt = jnp.einsum('mtlb,mbk->mtlk', hidden, up[layers])  # [M, T, l, h*d_h]
      elif cfg.variant == 'sep':
        hidden = nn.relu(jnp.einsum('tld,mtdb->mtlb', P, down[layers]))
        prompt = jnp.einsum('mtlb,mtbk->mtlk', hidden, up[layers])
      else:  # generate D^m_tau and U^m_tau first: far cheaper than contracting P first
        local_down = jnp.einsum('mtx,xdb->mtdb', I, down)  # [M, T, d, b]
        local_up = jnp.einsum('mtx,xbk->mtbk', I, up)  # [M, T, b, h*d_h]
        hidden = nn.relu(jnp.einsum('tld,mtdb->mtlb', P, local_down))
        prompt = jnp.einsum('mtlb,mtbk->mtlk', hidden, local_up)
      out.append(prompt.reshape(prompt.shape[:3] + (cfg.num_heads, cfg.head_dim)))
    return tuple(out)

  def layer_task_embedding(self, layers: slice):
    """I^m = h_t([k ; z_m]) for every task and the given layers: [M, T, t] ('global')."""
    dt = self.config.dtype
    return self.projector(self.task_embedding.astype(dt), self.layer_embedding[layers].astype(dt))


def batch_prompts(prompt_key, prompt_value, task_ids, query_segments):
  """Gathers each example's prompts and builds the prompt-column mask.

  prompt_key/value: [T, l, h, d_h]. task_ids: [batch] or [batch, S] (packed: the S
  segments' prompts are laid side by side, S*l columns, each visible only to its segment).
  query_segments: [batch, q_len], the segment id of each query (1 for every real query when
  unpacked, 0 for padding). Returns keys, values [batch, P, h, d_h] and mask [batch, 1, q, P].
  """
  l = prompt_key.shape[1]
  keys, values = gather_tasks(prompt_key, task_ids), gather_tasks(prompt_value, task_ids)
  batch = task_ids.shape[0]
  if task_ids.ndim == 1:
    prompt_segments = jnp.ones((batch, l), jnp.int32)
  else:
    S = task_ids.shape[1]
    keys = keys.reshape((batch, S * l) + keys.shape[3:])  # [batch, S*l, h, d_h]
    values = values.reshape((batch, S * l) + values.shape[3:])
    prompt_segments = jnp.broadcast_to(jnp.repeat(jnp.arange(1, S + 1, dtype=jnp.int32), l),
                                       (batch, S * l))
  keys = with_sharding_constraint(keys, ('batch', 'prompt', 'heads', 'kv'))
  values = with_sharding_constraint(values, ('batch', 'prompt', 'heads', 'kv'))
  mask = make_attention_mask(query_segments.astype(jnp.int32), prompt_segments, jnp.equal)
  return keys, values, mask


class InputPrompts(nn.Module):
  """'prompt_tuning': a per-task prompt [l, d] prepended to the encoder's input embeddings."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self, task_ids):
    cfg = self.config
    table = param_with_axes('prompts', nn.initializers.normal(1.0),
                            (cfg.num_tasks, cfg.prompt_length, cfg.emb_dim), jnp.float32,
                            axes=('tasks', 'prompt', 'embed'))
    return gather_tasks(table.astype(cfg.dtype), task_ids)  # [batch, l, d]


class AdapterWeights(NamedTuple):
  down: jnp.ndarray  # [T, d, a]
  down_bias: jnp.ndarray  # [T, a]
  up: jnp.ndarray  # [T, a, d]
  up_bias: jnp.ndarray  # [T, d]


def _adapter_specs(cfg, lead_shape, lead_axes, down_init, up_init):
  d, a = cfg.emb_dim, cfg.adapter_dim
  return {
      'down': (lead_shape + (d, a), lead_axes + ('embed', 'adapter'), down_init),
      'down_bias': (lead_shape + (a,), lead_axes + ('adapter',), nn.initializers.zeros),
      'up': (lead_shape + (a, d), lead_axes + ('adapter', 'embed'), up_init),
      'up_bias': (lead_shape + (d,), lead_axes + ('embed',), nn.initializers.zeros),
  }


class TaskAdapter(nn.Module):
  """'adapter': this layer's per-task adapter weights (up-projection starts at zero)."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self) -> AdapterWeights:
    cfg = self.config
    specs = _adapter_specs(cfg, (cfg.num_tasks,), ('tasks',), _fan_in(1, 2, 0),
                           nn.initializers.zeros)
    return AdapterWeights(**{k: param_with_axes(k, init, shape, jnp.float32, axes=axes)
                             .astype(cfg.dtype) for k, (shape, axes, init) in specs.items()})


class HyperAdapterGenerator(nn.Module):
  """'hyperformer' (Karimi Mahabadi et al. 2021, the ++ form): one hypernetwork generates
  every layer's adapter from I = h_t([task embedding ; layer embedding])."""
  config: HyperPromptConfig
  num_layers: int

  def setup(self):
    cfg = self.config
    t_in, t = cfg.task_embedding_dim, cfg.layer_task_embedding_dim
    self.task_embedding = param_with_axes('task_embedding', nn.initializers.normal(1.0),
                                          (cfg.num_tasks, t_in), jnp.float32,
                                          axes=('tasks', 'task_embed'))
    self.layer_embedding = param_with_axes('layer_embedding', nn.initializers.normal(1.0),
                                           (self.num_layers, t_in), jnp.float32,
                                           axes=('layers', 'task_embed'))
    self.projector = TaskProjector(cfg, name='task_projector')
    specs = _adapter_specs(cfg, (t,), ('hyper_embed',), _fan_in((0, 1), 2),
                           nn.initializers.zeros)
    self.generators = {k: param_with_axes(f'{k}_generator', init, shape, jnp.float32, axes=axes)
                       for k, (shape, axes, init) in specs.items()}

  def __call__(self, layer: int) -> AdapterWeights:
    dt = self.config.dtype
    I = self.projector(self.task_embedding.astype(dt),
                       self.layer_embedding[layer][None].astype(dt))[0]  # [T, t]
    g = {k: v.astype(dt) for k, v in self.generators.items()}
    return AdapterWeights(  # each with a leading task axis [T, ...]
        down=jnp.einsum('tx,xda->tda', I, g['down']),
        down_bias=I @ g['down_bias'],
        up=jnp.einsum('tx,xad->tad', I, g['up']),
        up_bias=I @ g['up_bias'])


def apply_adapter(y, weights: AdapterWeights, tasks, num_tasks: int):
  """y + U_tau ReLU(D_tau y) with the adapter of each token's task. y: [batch, len, d]."""
  select = task_one_hot(tasks, num_tasks, y.dtype)  # [batch, len, T]
  hidden = jnp.einsum('bld,tda,blt->bla', y, weights.down, select) + select @ weights.down_bias
  hidden = nn.relu(hidden)  # [batch, len, a]
  out = jnp.einsum('bla,tad,blt->bld', hidden, weights.up, select) + select @ weights.up_bias
  return y + out
