"""T5.1.1 building blocks with logical axis names, and attention that accepts prompt K/V.

Parameters are created in float32 with `param_with_axes` and cast to the compute dtype where
they are used. Parameter names and shapes follow t5x's `examples/t5` layers so that T5X
checkpoints restore into these modules unchanged.
"""

import functools
import operator
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
from jax import lax

param_with_axes = nn_partitioning.param_with_axes
with_sharding_constraint = nn_partitioning.with_sharding_constraint

Array = jnp.ndarray
Initializer = Callable[..., Array]

NEG_INF = -1e10


def mask_to_bias(mask: Optional[Array], dtype) -> Optional[Array]:
  """Boolean/0-1 mask -> additive bias (0 where visible, -1e10 where hidden)."""
  if mask is None:
    return None
  return jnp.where(mask > 0, 0.0, NEG_INF).astype(dtype)


def make_attention_mask(query_input, key_input, pairwise_fn=jnp.multiply, dtype=jnp.float32):
  """[batch, q], [batch, k] -> [batch, 1, q, k] mask from a pairwise function."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])  # [batch, q, k]
  return mask[..., None, :, :].astype(dtype)


def combine_masks(*masks, dtype=jnp.float32):
  """Logical AND of the given masks (None entries ignored); None if there are none."""
  present = [m for m in masks if m is not None]
  if not present:
    return None
  return functools.reduce(jnp.logical_and, present).astype(dtype)


def make_decoder_mask(decoder_target_tokens, dtype, decoder_segment_ids=None):
  """Causal + padding (+ packing) self-attention mask: [batch, 1, len, len]."""
  positions = jnp.broadcast_to(
      jnp.arange(decoder_target_tokens.shape[-1], dtype=jnp.int32), decoder_target_tokens.shape)
  causal = make_attention_mask(positions, positions, jnp.greater_equal, dtype=dtype)
  padding = make_attention_mask(decoder_target_tokens > 0, decoder_target_tokens > 0, dtype=dtype)
  segments = None
  if decoder_segment_ids is not None:
    segments = make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal, dtype=dtype)
  return combine_masks(causal, padding, segments, dtype=dtype)


class DenseGeneral(nn.Module):
  """Bias-free linear map over `axis`; the kernel is stored flattened to 2-D as in t5x."""
  features: Union[int, Tuple[int, ...]]
  axis: Union[int, Tuple[int, ...]] = -1
  dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  kernel_axes: Tuple[str, ...] = ()

  @nn.compact
  def __call__(self, inputs):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    inputs = jnp.asarray(inputs, self.dtype)
    axis = tuple(a % inputs.ndim for a in axis)
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel = param_with_axes(
        'kernel', self.kernel_init, (int(np.prod(in_shape)), int(np.prod(features))),
        jnp.float32, axes=self.kernel_axes)
    kernel = jnp.reshape(jnp.asarray(kernel, self.dtype), in_shape + features)
    return lax.dot_general(inputs, kernel, ((axis, tuple(range(len(axis)))), ((), ())))


class Embed(nn.Module):
  """Token embedding table [vocab, embed]; `attend` gives logits against it."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32
  attend_dtype: Optional[Any] = None
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
  one_hot: bool = True

  def setup(self):
    self.embedding = param_with_axes(
        'embedding', self.embedding_init, (self.num_embeddings, self.features), jnp.float32,
        axes=('vocab', 'embed'))

  def __call__(self, inputs):
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'Embed needs integer token ids, got dtype {inputs.dtype}.')
    table = jnp.asarray(self.embedding, self.dtype)
    if self.one_hot:
      # A one-hot contraction instead of a gather partitions cleanly under SPMD.
      one_hot = jax.nn.one_hot(inputs, self.num_embeddings, dtype=self.dtype)  # [..., vocab]
      return jnp.dot(one_hot, table)
    return with_sharding_constraint(table[inputs], ('batch', 'length', 'embed'))

  def attend(self, query):
    dtype = self.attend_dtype or self.dtype
    return jnp.dot(query, jnp.asarray(self.embedding, dtype).T)


class LayerNorm(nn.Module):
  """T5 RMS layer norm: no mean subtraction, no bias."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    scale = param_with_axes('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32,
                            axes=('embed',))
    y = x * lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return jnp.asarray(y, self.dtype) * jnp.asarray(scale, self.dtype)


def _activation(name: Union[str, Callable]) -> Callable:
  if callable(name):
    return name
  if name == 'linear':
    return lambda x: x
  if not hasattr(nn, name):
    raise ValueError(f'Unknown mlp activation {name!r}: use a flax.linen function name or "linear".')
  return getattr(nn, name)


class MlpBlock(nn.Module):
  """T5 feed-forward block; several activations make a gated unit (wi_0, wi_1, ...)."""
  intermediate_dim: int
  activations: Sequence[Union[str, Callable]] = ('relu',)
  intermediate_dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, deterministic: bool = False):
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
    branches = []
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = DenseGeneral(self.intermediate_dim, dtype=self.dtype, kernel_init=init,
                       kernel_axes=('embed', 'mlp'), name=name)(inputs)  # [batch, length, mlp]
      branches.append(_activation(act)(h))
    x = functools.reduce(operator.mul, branches)
    x = nn.Dropout(self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        x, deterministic=deterministic)
    x = with_sharding_constraint(x, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], dtype=self.dtype, kernel_init=init,
                        kernel_axes=('mlp', 'embed'), name='wo')(x)


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
  """T5's log-spaced bucketing of (key position - query position), in numpy."""
  n = -relative_position
  offset = 0
  if bidirectional:
    num_buckets //= 2
    offset = (n < 0).astype(np.int32) * num_buckets
    n = np.abs(n)
  else:
    n = np.maximum(n, 0)
  exact = num_buckets // 2
  log_ratio = np.log(n.astype(np.float32) / exact + np.finfo(np.float32).eps)
  large = exact + (log_ratio / np.log(max_distance / exact) * (num_buckets - exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return offset + np.where(n < exact, n, large)


class RelativePositionBiases(nn.Module):
  """Per-head learned bias by relative-position bucket: returns [1, heads, q_len, k_len]."""
  num_heads: int
  dtype: Any
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool = True):
    table = param_with_axes(
        'rel_embedding', nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform'),
        (self.num_heads, self.num_buckets), jnp.float32, axes=('heads', 'relpos_buckets'))
    rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]  # [q_len, k_len]
    buckets = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
    one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)  # [q, k, buckets]
    bias = jnp.einsum('hn,qkn->hqk', jnp.asarray(table, self.dtype), one_hot)
    return bias[None]  # [1, heads, q_len, k_len]


def attention_with_prompts(query, key, value, bias, prompt_key=None, prompt_value=None,
                           prompt_bias=None, dropout_rng=None, dropout_rate=0.0,
                           deterministic=True, dtype=jnp.float32, float32_logits=False,
                           return_weights=False):
  """Dot-product attention (no 1/sqrt(d) scaling, as in T5) over [prompts ; keys].

  query: [batch, q_len, heads, head_dim]; key, value: [batch, k_len, heads, head_dim];
  bias: broadcastable to [batch, heads, q_len, k_len] (masks + relative positions).
  prompt_key, prompt_value: [batch, p_len, heads, head_dim] or None; prompt_bias:
  broadcastable to [batch, heads, q_len, p_len] (masking only: prompts get no position bias).
  With return_weights, also the attention weights [batch, heads, q_len, p_len+k_len] (before
  dropout; prompt columns first).
  """
  if float32_logits:
    query, key = query.astype(jnp.float32), key.astype(jnp.float32)
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key)  # [batch, heads, q_len, k_len]
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  if prompt_key is not None:
    pk = prompt_key.astype(query.dtype)
    p_logits = jnp.einsum('bqhd,bphd->bhqp', query, pk)  # [batch, heads, q_len, p_len]
    if prompt_bias is not None:
      p_logits = p_logits + prompt_bias.astype(p_logits.dtype)
    logits = jnp.concatenate([p_logits, logits], axis=-1)  # [batch, heads, q_len, p_len+k_len]
  weights = jax.nn.softmax(logits).astype(dtype)
  probabilities = weights
  if not deterministic and dropout_rate > 0.0:
    keep_shape = list(weights.shape)
    keep_shape[-2] = 1  # T5 broadcasts attention dropout over the query axis.
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, keep_shape)
    weights = weights * (keep.astype(dtype) / jnp.asarray(1.0 - dropout_rate, dtype))
  if prompt_key is None:
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, value)  # [batch, q_len, heads, head_dim]
  else:  # two contractions, not a concatenated copy of the values (per decoding step too)
    p_len = prompt_key.shape[1]
    out = (jnp.einsum('bhqp,bphd->bqhd', weights[..., :p_len], prompt_value.astype(value.dtype))
           + jnp.einsum('bhqk,bkhd->bqhd', weights[..., p_len:], value))
  return (out, probabilities) if return_weights else out


def _join_prompts(query, key, value, mask, bias, prompt_key, prompt_value, prompt_mask):
  """Keys, values, mask and position bias over [prompts ; keys]: prompt columns first,
  masked by prompt_mask and without position bias, as attention_with_prompts treats them."""
  batch, q_len, p_len, k_len = query.shape[0], query.shape[1], prompt_key.shape[1], key.shape[1]
  key = jnp.concatenate([prompt_key.astype(key.dtype), key], axis=1)  # [batch, p+k, h, d]
  value = jnp.concatenate([prompt_value.astype(value.dtype), value], axis=1)
  if mask is not None or prompt_mask is not None:
    ones = lambda n: jnp.ones((batch, 1, q_len, n), jnp.float32)
    part = lambda m, n: ones(n) if m is None else jnp.broadcast_to(m, (batch, 1, q_len, n))
    mask = jnp.concatenate([part(prompt_mask, p_len), part(mask, k_len)], axis=-1)
  if bias is not None:  # [.., heads, q_len, k_len]: zero for the prompt columns
    bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(p_len, 0)])
  return key, value, mask, bias


class MultiHeadDotProductAttention(nn.Module):
  """T5 multi-head attention with an autoregressive cache and optional prompt K/V.

  Prompts are never written to the cache, so they neither occupy nor shift its positions.
  """
  num_heads: int
  head_dim: int
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  float32_logits: bool = False

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, bias=None, *, prompt_key=None,
               prompt_value=None, prompt_mask=None, decode=False, deterministic=False):
    kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
    # T5 folds 1/sqrt(head_dim) into the query initialisation.
    query_init = lambda *a: kernel_init(*a) / jnp.sqrt(self.head_dim).astype(jnp.float32)
    proj = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                             kernel_axes=('embed', 'joined_kv'), dtype=self.dtype)
    query = proj(kernel_init=query_init, name='query')(inputs_q)  # [batch, q_len, heads, kv]
    key = proj(kernel_init=kernel_init, name='key')(inputs_kv)  # [batch, k_len, heads, kv]
    value = proj(kernel_init=kernel_init, name='value')(inputs_kv)
    query = with_sharding_constraint(query, ('batch', 'length', 'heads', 'kv'))
    key = with_sharding_constraint(key, ('batch', 'length', 'heads', 'kv'))
    value = with_sharding_constraint(value, ('batch', 'length', 'heads', 'kv'))

    if decode:
      query, key, value, mask, bias = self._use_cache(query, key, value, mask, bias)

    p_len = 0 if prompt_key is None else prompt_key.shape[1]
    if p_len and not deterministic and not decode:
      # Training: one contraction over [prompts ; keys] costs less than two (the backward
      # pass of the thin p-column products runs far below matmul speed). Forward-only calls
      # (evaluation, scoring, decoding) keep two: there the copies cost more, and no decoding
      # step copies the cache.
      key, value, mask, bias = _join_prompts(query, key, value, mask, bias, prompt_key,
                                             prompt_value, prompt_mask)
      prompt_key = prompt_value = prompt_mask = None
    attention_bias = mask_to_bias(mask, self.dtype)
    if bias is not None:
      attention_bias = bias if attention_bias is None else attention_bias + bias
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    x, weights = attention_with_prompts(
        query, key, value, attention_bias, prompt_key=prompt_key, prompt_value=prompt_value,
        prompt_bias=mask_to_bias(prompt_mask, self.dtype), dropout_rng=dropout_rng,
        dropout_rate=self.dropout_rate, deterministic=deterministic, dtype=self.dtype,
        float32_logits=self.float32_logits, return_weights=True)
    if self.is_mutable_collection('intermediates'):  # for analysis.py; free otherwise
      w = weights.astype(jnp.float32)  # [batch, heads, q_len, p_len + k_len]
      self.sow('intermediates', 'prompt_mass', w[..., :p_len].sum(-1))  # [batch, heads, q]
      self.sow('intermediates', 'entropy', -jnp.sum(w * jnp.log(w + 1e-20), axis=-1))
    return DenseGeneral(inputs_q.shape[-1], axis=(-2, -1), kernel_init=kernel_init,
                        kernel_axes=('joined_kv', 'embed'), dtype=self.dtype, name='out')(x)

  def _use_cache(self, query, key, value, mask, bias):
    """t5x cache conventions: K/V cached as [batch, heads, head_dim, length] plus an index."""
    initialized = self.has_variable('cache', 'cached_key')
    swap = lambda s: s[:-3] + (s[-2], s[-1], s[-3])
    cached_key = self.variable('cache', 'cached_key', jnp.zeros, swap(key.shape), key.dtype)
    cached_value = self.variable('cache', 'cached_value', jnp.zeros, swap(value.shape),
                                 value.dtype)
    cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized:
      return query, key, value, mask, bias
    batch, heads, head_dim, length = cached_key.value.shape
    if query.shape != (batch, 1, heads, head_dim):
      raise ValueError(f'Autoregressive cache expects one query position of shape '
                       f'{(batch, 1, heads, head_dim)}, got {query.shape}.')
    index = cache_index.value
    position = jax.nn.one_hot(index, length, dtype=key.dtype)  # [length]
    new_key = cached_key.value + jnp.moveaxis(key, -3, -1) * position
    new_value = cached_value.value + jnp.moveaxis(value, -3, -1) * position
    cached_key.value, cached_value.value = new_key, new_value
    cache_index.value = index + 1
    key = jnp.moveaxis(new_key, -1, -3)  # [batch, length, heads, head_dim]
    value = jnp.moveaxis(new_value, -1, -3)
    seen = jnp.broadcast_to(jnp.arange(length) <= index, (batch, 1, 1, length))
    mask = combine_masks(mask, seen)
    if bias is not None:  # the relative-position row of the current query
      bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
    return query, key, value, mask, bias
