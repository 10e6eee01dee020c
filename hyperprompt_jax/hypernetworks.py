"""Task conditioning: hyper-prompt generators, input prompts and (hyper-)adapters.

Everything here is computed once per task and layer per step — for all `num_tasks` tasks,
which bounds it by the task table, never by the batch — and then gathered per example.

Notation (DESIGN.md): T tasks, l prompt length, d emb_dim, h heads, d_h head_dim,
b hypernetwork bottleneck, t' task/layer embedding size, t layer-aware task embedding size.
"""

from typing import NamedTuple, Optional

import jax
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


VOCAB_INIT_POOL = 5000  # Lester et al.: prompts start as embeddings of the 5,000 commonest tokens


def sample_vocab_prompts(rng, embedding, shape):
  """[T, l, d] input prompts, each vector a copy of a token embedding drawn uniformly from
  ids 3 .. min(vocab, 5000) - 1 (SentencePiece orders ids by frequency; 0-2 are pad, EOS
  and unknown). embedding: [vocab, d]."""
  vocab = embedding.shape[0]
  high = min(vocab, VOCAB_INIT_POOL)
  low = 3 if high > 3 else 0
  ids = jax.random.randint(rng, shape[:2], low, high)  # [T, l]
  return jnp.asarray(embedding, jnp.float32)[ids]


class InputPrompts(nn.Module):
  """'prompt_tuning' (Lester et al. 2021): a per-task prompt [l_in, d] prepended to the
  encoder's input embeddings; initialised from token embeddings ('vocab') or N(0, 1)."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self, task_ids, token_embedding):
    """task_ids [batch]; token_embedding [vocab, d] (the vocab initialisation's source)."""
    cfg = self.config
    shape = (cfg.num_tasks, cfg.input_prompt_length, cfg.emb_dim)
    if cfg.input_prompt_init == 'vocab':
      init = lambda rng, shape: sample_vocab_prompts(rng, token_embedding, shape)
    else:
      init = nn.initializers.normal(1.0)
    table = param_with_axes('prompts', init, shape, axes=('tasks', 'prompt', 'embed'))
    return gather_tasks(table.astype(cfg.dtype), task_ids)  # [batch, l_in, d]


class AdapterWeights(NamedTuple):
  """One adapter's weights for every task (leading axis [T]); HyperFormer++ also generates
  the scale and bias of a layer norm on the adapter's output."""
  down: jnp.ndarray  # [T, d, a]
  down_bias: jnp.ndarray  # [T, a]
  up: jnp.ndarray  # [T, a, d]
  up_bias: jnp.ndarray  # [T, d]
  norm_scale: Optional[jnp.ndarray] = None  # [T, d]
  norm_bias: Optional[jnp.ndarray] = None  # [T, d]


def _adapter_shapes(cfg):
  d, a = cfg.emb_dim, cfg.adapter_size
  return {'down': ((d, a), ('embed', 'adapter')), 'down_bias': ((a,), ('adapter',)),
          'up': ((a, d), ('adapter', 'embed')), 'up_bias': ((d,), ('embed',))}


HOULSBY_INIT_STD = 1e-3  # adapter-bert's init_scale: truncated normal, near identity


class TaskAdapter(nn.Module):
  """'adapter' (Houlsby et al. 2019): one block's per-task adapter, y + U gelu(D y + b) + c,
  kernels truncated-normal with std 1e-3 and zero biases, so it starts near the identity."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self) -> AdapterWeights:
    cfg = self.config
    weights = {}
    for name, (shape, axes) in _adapter_shapes(cfg).items():
      init = (nn.initializers.zeros if name.endswith('bias')
              else nn.initializers.truncated_normal(HOULSBY_INIT_STD))
      weights[name] = param_with_axes(name, init, (cfg.num_tasks,) + shape, jnp.float32,
                                      axes=('tasks',) + axes).astype(cfg.dtype)
    return AdapterWeights(**weights)


class HyperFormerTasks(nn.Module):
  """'hyperformer': the task embeddings [T, t'] both stacks' generators read."""
  config: HyperPromptConfig

  @nn.compact
  def __call__(self):
    cfg = self.config
    return param_with_axes('task_embedding', nn.initializers.normal(1.0),
                           (cfg.num_tasks, cfg.task_embedding_dim), jnp.float32,
                           axes=('tasks', 'task_embed')).astype(cfg.dtype)


HYPERFORMER_INIT_STD = 1e-2  # every hypernetwork layer: N(0, 1e-2) kernel, zero bias


def _standard_layer_norm(x, eps):
  """LayerNorm without its affine part (mean and variance over the last axis), in float32."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps)


class HyperFormerGenerator(nn.Module):
  """'hyperformer': HyperFormer++ (Karimi Mahabadi et al. 2021, the layer- and block-aware
  form, as rabeehk/hyperformer's AdapterLayersOneHyperNetController), one per stack.

  For task tau, layer m and block type b (self-attention or feed-forward):
    I = LayerNorm(W2 ReLU(W1 [k_tau ; z_m ; e_b] + c1) + c2)      (3t' -> H -> t)
  and every adapter weight is a linear map of I with a bias: D, its bias, U, its bias, and the
  scale and bias of a layer norm on the adapter's output (the conditional layer norm):
    adapter(y) = y + LN_{scale, bias}(U gelu(D y + b_D) + b_U).
  Every hypernetwork kernel starts N(0, 1e-2), every bias at zero.
  """
  config: HyperPromptConfig
  num_layers: int
  tasks: nn.Module  # HyperFormerTasks, shared by the stacks

  def setup(self):
    cfg = self.config
    t_in, H, t = cfg.task_embedding_dim, cfg.hyperformer_hidden_dim, cfg.layer_task_embedding_dim
    small, zeros = nn.initializers.normal(HYPERFORMER_INIT_STD), nn.initializers.zeros
    p = lambda name, init, shape, axes: param_with_axes(name, init, shape, jnp.float32,
                                                        axes=axes)
    self.layer_embedding = p('layer_embedding', nn.initializers.normal(1.0),
                             (self.num_layers, t_in), ('layers', 'task_embed'))
    self.block_embedding = p('block_embedding', nn.initializers.normal(1.0),
                             (len(cfg.adapter_blocks), t_in), ('adapter_blocks', 'task_embed'))
    self.projector = (p('hidden_kernel', small, (3 * t_in, H), ('task_embed', 'hyper_hidden')),
                      p('hidden_bias', zeros, (H,), ('hyper_hidden',)),
                      p('out_kernel', small, (H, t), ('hyper_hidden', 'hyper_embed')),
                      p('out_bias', zeros, (t,), ('hyper_embed',)))
    self.projector_norm = (p('projector_norm_scale', nn.initializers.ones, (t,), ('hyper_embed',)),
                           p('projector_norm_bias', zeros, (t,), ('hyper_embed',)))
    shapes = dict(_adapter_shapes(cfg), norm_scale=((cfg.emb_dim,), ('embed',)),
                  norm_bias=((cfg.emb_dim,), ('embed',)))
    self.generators = {
        name: (p(f'{name}_generator', small, (t,) + shape, ('hyper_embed',) + axes),
               p(f'{name}_generator_bias', zeros, shape, axes))
        for name, (shape, axes) in shapes.items()}

  def __call__(self, layer: int, block: str) -> AdapterWeights:
    """The adapter of `block` ('self_attention' or 'mlp') in `layer` of this stack, for
    every task: AdapterWeights with leading axis [T]."""
    cfg = self.config
    dt = cfg.dtype
    tasks = self.tasks()  # [T, t']
    T = tasks.shape[0]
    index = list(cfg.adapter_blocks).index(block)
    x = jnp.concatenate([tasks, jnp.broadcast_to(self.layer_embedding[layer].astype(dt), tasks.shape),
                         jnp.broadcast_to(self.block_embedding[index].astype(dt), tasks.shape)],
                        axis=-1)  # [T, 3t']
    w1, c1, w2, c2 = (v.astype(dt) for v in self.projector)
    h = nn.relu(x @ w1 + c1) @ w2 + c2  # [T, t]
    scale, bias = self.projector_norm
    I = (_standard_layer_norm(h, 1e-6) * scale + bias).astype(dt)  # [T, t]
    out = {}
    for name, (kernel, kernel_bias) in self.generators.items():
      flat = kernel.reshape(kernel.shape[0], -1).astype(dt)  # [t, prod(shape)]
      out[name] = (I @ flat).reshape((T,) + kernel.shape[1:]) + kernel_bias.astype(dt)
    return AdapterWeights(**out)


def apply_adapter(y, weights: AdapterWeights, tasks, num_tasks: int):
  """y + U_tau gelu(D_tau y + b) + c with the adapter of each token's task (HyperFormer++:
  the adapter's output goes through its task's layer norm first). y: [batch, len, d].
  gelu is the tanh approximation (BERT's and adapter-bert's gelu, HyperFormer's gelu_new)."""
  select = task_one_hot(tasks, num_tasks, y.dtype)  # [batch, len, T]
  hidden = jnp.einsum('bld,tda,blt->bla', y, weights.down, select) + select @ weights.down_bias
  hidden = nn.gelu(hidden, approximate=True)  # [batch, len, a]
  out = jnp.einsum('bla,tad,blt->bld', hidden, weights.up, select) + select @ weights.up_bias
  if weights.norm_scale is not None:  # HyperFormer++'s conditional layer norm (torch's eps)
    normed = _standard_layer_norm(out, 1e-5).astype(y.dtype)
    out = normed * (select @ weights.norm_scale) + select @ weights.norm_bias
  return y + out
