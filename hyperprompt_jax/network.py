"""The HyperPrompt T5.1.1 encoder-decoder: a drop-in module for t5x's EncoderDecoderModel.

`Transformer.encode`, `.decode` and `__call__` keep t5x's signatures and add a keyword
`task_ids`: int32 [batch], or [batch, max_segments] for packed rows (entry s is the task of
segment s+1; unused slots hold 0). With variant 'mtl' the parameter tree is exactly that of
t5x `examples/t5/network.Transformer`; other variants add parameters beside it. With
`config.scan_layers` each stack's layers run under `nn.scan`, their parameters stacked
(`encoder/layers/...`, t5x's scalable_t5 layout; `scan_layout` converts between the two).
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

from hyperprompt_jax import layers
from hyperprompt_jax.config import HyperPromptConfig  # re-exported: the network's config
from hyperprompt_jax.hypernetworks import (HyperFormerGenerator, HyperFormerTasks,
                                           HyperPromptGenerator, InputPrompts, TaskAdapter,
                                           apply_adapter, batch_prompts)
from hyperprompt_jax.task_ids import check_task_ids, gather_tasks, token_tasks

__all__ = ['HyperPromptConfig', 'Transformer', 'CONDITIONING_PARAMS_REGEX']

# Names of the task-conditioning modules, i.e. of everything that is not T5.1.1.
SHARED_HYPERPROMPT = 'hyperprompt'            # one generator for both stacks
ENCODER_HYPERPROMPT = 'encoder_hyperprompt'   # share_encoder_decoder_prompts=False
DECODER_HYPERPROMPT = 'decoder_hyperprompt'
INPUT_PROMPTS = 'input_prompts'               # 'prompt_tuning'
HYPERFORMER = 'hyperformer'                   # HyperFormer++'s task embeddings
ENCODER_HYPERFORMER = 'encoder_hyperformer'   # its adapter generator, one per stack
DECODER_HYPERFORMER = 'decoder_hyperformer'
LAYER_ADAPTERS = ('self_attention_adapter', 'mlp_adapter')  # 'adapter': <block>_adapter
# Parameter paths ('/'-joined) of the task conditioning: options/freeze_backbone.gin.
_TOP_LEVEL = (SHARED_HYPERPROMPT, ENCODER_HYPERPROMPT, DECODER_HYPERPROMPT, INPUT_PROMPTS,
              HYPERFORMER, ENCODER_HYPERFORMER, DECODER_HYPERFORMER)
CONDITIONING_PARAMS_REGEX = f'^({"|".join(_TOP_LEVEL)})/|/({"|".join(LAYER_ADAPTERS)})/'



def _adapt(cfg, y, block, adapters, tasks):
  """y after this layer's adapter of `block` ('self_attention', 'mlp') when the variant puts
  one there: its own per-task adapter ('adapter') or the weights the stack's generator made
  for this layer (`adapters`, 'hyperformer'). Call inside a compact method."""
  if block not in cfg.adapter_blocks:
    return y
  if cfg.variant == 'adapter':
    weights = TaskAdapter(cfg, name=f'{block}_adapter')()
  else:
    weights = adapters[block]
  return apply_adapter(y, weights, tasks, cfg.num_tasks)


def _dropout(cfg, x, deterministic, broadcast=True):
  dims = (-2,) if broadcast else ()
  return nn.Dropout(rate=cfg.dropout_rate, broadcast_dims=dims)(x, deterministic=deterministic)


def _prompts(layer_inputs, prompt_mask):
  """(keys, values, mask) of this layer's prompts, or None."""
  keys, values = layer_inputs.get('prompt_keys'), layer_inputs.get('prompt_values')
  return None if keys is None else (keys, values, prompt_mask)


class EncoderLayer(nn.Module):
  """One encoder layer. `layer_inputs` holds what differs between layers besides the
  parameters: this layer's prompts ('prompt_keys', 'prompt_values': [batch, P, heads,
  head_dim]) and HyperFormer++'s generated adapters ('adapters'), each present when used.
  `scanned`: called by `nn.scan`, so it returns (output, None)."""
  config: HyperPromptConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, inputs, encoder_mask, bias, deterministic, prompt_mask, tasks,
               layer_inputs):
    cfg = self.config
    x = layers.LayerNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(inputs)
    pk, pv, pmask = _prompts(layer_inputs, prompt_mask) or (None, None, None)
    x = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
        name='attention')(x, x, encoder_mask, bias, prompt_key=pk, prompt_value=pv,
                          prompt_mask=pmask, deterministic=deterministic)
    adapters = layer_inputs.get('adapters')
    x = _adapt(cfg, x, 'self_attention', adapters, tasks)
    x = _dropout(cfg, x, deterministic) + inputs
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
    y = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype,
                        name='mlp')(y, deterministic=deterministic)
    y = _adapt(cfg, y, 'mlp', adapters, tasks)
    out = _dropout(cfg, y, deterministic) + x
    return (out, None) if self.scanned else out


class DecoderLayer(nn.Module):
  """One decoder layer; `layer_inputs` and `scanned` as in EncoderLayer."""
  config: HyperPromptConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, inputs, encoded, decoder_mask, encoder_decoder_mask, bias, deterministic,
               decode, prompt_mask, tasks, layer_inputs):
    cfg = self.config
    x = layers.LayerNorm(dtype=cfg.dtype, name='pre_self_attention_layer_norm')(inputs)
    pk, pv, pmask = _prompts(layer_inputs, prompt_mask) or (None, None, None)
    x = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
        name='self_attention')(x, x, decoder_mask, bias, prompt_key=pk, prompt_value=pv,
                               prompt_mask=pmask, deterministic=deterministic, decode=decode)
    adapters = layer_inputs.get('adapters')
    x = _adapt(cfg, x, 'self_attention', adapters, tasks)
    x = _dropout(cfg, x, deterministic) + inputs
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_cross_attention_layer_norm')(x)
    y = layers.MultiHeadDotProductAttention(
        num_heads=cfg.num_heads, head_dim=cfg.head_dim, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, float32_logits=cfg.float32_attention_logits,
        name='encoder_decoder_attention')(y, encoded, encoder_decoder_mask,
                                          deterministic=deterministic)
    y = _dropout(cfg, y, deterministic) + x
    z = layers.LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(y)
    z = layers.MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, cfg.dtype,
                        name='mlp')(z, deterministic=deterministic)
    z = _adapt(cfg, z, 'mlp', adapters, tasks)
    out = _dropout(cfg, z, deterministic) + y
    return (out, None) if self.scanned else out


REMAT_POLICIES = {'minimal': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  'full': None}  # None: nothing is saved, the whole layer is recomputed


def _run_layers(cfg, layer_cls, num_layers, x, broadcast, static, per_layer, remat):
  """x through `num_layers` layers of `layer_cls` (called inside the stack's compact method):
  `broadcast` are the arguments every layer shares (those at the indices `static` are Python
  values), `per_layer` each layer's own inputs (`_merge_layer_inputs`). Unscanned:
  modules layers_0 .. layers_{n-1}. Scanned: one module 'layers' under `nn.scan`, with
  parameters (and the decoding cache) stacked on a leading 'layers' axis."""
  policy = cfg.layer_remat if remat else 'none'
  cls = layer_cls
  if policy != 'none':  # inside a scan, the scan itself keeps XLA from merging the layers
    cls = nn.remat(layer_cls, policy=REMAT_POLICIES[policy], prevent_cse=not cfg.scan_layers,
                   static_argnums=tuple(i + 2 for i in static))
  if not cfg.scan_layers:
    for i in range(num_layers):
      x = cls(cfg, name=f'layers_{i}')(x, *broadcast, per_layer[i])
    return x
  scanned = nn_partitioning.scan_with_axes(
      cls, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
      split_rngs={'params': True, 'dropout': True},
      in_axes=(nn.broadcast,) * len(broadcast) + (0,), length=num_layers, axis_name='layers')
  x, _ = scanned(cfg, scanned=True, name='layers')(x, *broadcast, per_layer)
  return x


def _relpos(cfg):
  return layers.RelativePositionBiases(num_heads=cfg.num_heads, dtype=cfg.dtype,
                                       name='relpos_bias')


def _stack_prompts(cfg, stack, prompt_gen, prompt_offset):
  """Every prompted layer's key/value prompts of a stack, generated together, or None."""
  count = cfg.prompted_layers(stack)
  if prompt_gen is None or not count:
    return None
  return prompt_gen(prompt_offset, count)  # two [layers, T, l, heads, head_dim]


def _task_context(task_ids, segment_ids, length, real):
  """Per-token tasks [batch, length] and each query's segment for the prompt mask
  (segment ids when packed, real-token flags otherwise), or (None, None) for 'mtl'."""
  if task_ids is None:
    return None, None
  tasks = token_tasks(task_ids, segment_ids, length)
  if segment_ids is None:
    return tasks, real
  return tasks, segment_ids if task_ids.ndim == 2 else segment_ids > 0


def _batch_stack_prompts(cfg, stack_prompts, task_ids, query_segments):
  """Each example's prompts of every layer and the mask [batch, 1, q_len, P] they share:
  ({'prompt_keys', 'prompt_values'} [layers, batch, P, heads, head_dim], mask), or
  ({}, None) without prompts."""
  if stack_prompts is None:
    return {}, None
  if cfg.scan_layers:  # one gather for all layers
    keys, values, masks = jax.vmap(batch_prompts, in_axes=(0, 0, None, None))(
        stack_prompts[0], stack_prompts[1], task_ids, query_segments)
    return {'prompt_keys': keys, 'prompt_values': values}, masks[0]
  per_layer = [batch_prompts(stack_prompts[0][i], stack_prompts[1][i], task_ids,
                             query_segments) for i in range(stack_prompts[0].shape[0])]
  return [{'prompt_keys': k, 'prompt_values': v} for k, v, _ in per_layer], per_layer[0][2]


def _stack_adapters(cfg, generator, num_layers):
  """HyperFormer++: every layer's generated adapters, [{'adapters': {block: AdapterWeights
  [T, ...]}}] per layer, or {} for other variants."""
  if generator is None:
    return {}
  return [{'adapters': {b: generator(i, b) for b in cfg.adapter_blocks}}
          for i in range(num_layers)]


def _merge_layer_inputs(cfg, num_layers, *parts):
  """The layers' own inputs in the form `_run_layers` takes: a list of per-layer dicts, or,
  with scan_layers, one dict of stacked [layers, ...] leaves. Each part is either form
  (a dict of stacked leaves, a list of per-layer dicts) or {} when unused."""
  if cfg.scan_layers:
    merged = {}
    for part in parts:
      merged.update(jax.tree.map(lambda *a: jnp.stack(a), *part) if isinstance(part, list)
                    else part)
    return merged
  merged = [{} for _ in range(num_layers)]
  for part in parts:
    if not isinstance(part, list):
      part = [jax.tree.map(lambda a, i=i: a[i], part) for i in range(num_layers)] if part else []
    for layer, inputs in zip(merged, part):
      layer.update(inputs)
  return merged


class _DecodePrompts(nn.Module):
  """Cached decoding: each example's decoder prompts of every layer, made at the first
  decode step (under `nn.cond`, from the parameters the step is given) and read from the
  cache at every later token. The cache itself holds zeros until then, so a cache made by
  `init(..., decode=True)` (flax's way, fresh parameters) and one made by
  `apply(params, ..., mutable=['cache'])` (t5x's) decode the same. Laid out like the layers'
  own cache, so t5x's beam search expands and reorders them with the rest: batch-major
  [batch, layers, ...], or [layers, batch, ...] with scan_layers (t5x's cache_offset=1). The
  step counter is named `cache_index`, like the attention's, so beam search leaves it as is."""
  config: HyperPromptConfig
  prompt_generator: nn.Module
  prompt_offset: int

  def _make(self, task_ids):
    keys, values = _stack_prompts(self.config, 'decoder', self.prompt_generator,
                                  self.prompt_offset)
    axis = 0 if self.config.scan_layers else 1
    gather = lambda p: jnp.stack([gather_tasks(p[i], task_ids) for i in range(p.shape[0])],
                                 axis)
    return gather(keys), gather(values)  # two [batch, layers, l, heads, head_dim] (or layers first)

  @nn.compact
  def __call__(self, task_ids, query_segments):
    """The prompts of every layer, {'prompt_keys', 'prompt_values'}: [layers, batch, l,
    heads, head_dim], and their mask [batch, 1, q_len, l]."""
    ready = self.has_variable('cache', 'prompt_keys')
    cfg = self.config
    shape = (task_ids.shape[0], cfg.prompted_layers('decoder'), cfg.prompt_length,
             cfg.num_heads, cfg.head_dim)
    if cfg.scan_layers:
      shape = (shape[1], shape[0]) + shape[2:]
    self.variable('cache', 'prompt_keys', jnp.zeros, shape, cfg.dtype)
    self.variable('cache', 'prompt_values', jnp.zeros, shape, cfg.dtype)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    if not ready:  # creating the cache: the output is not used; the prompts wait for step 0
      keys, values = self._make(task_ids)
    else:
      def make(module, task_ids):
        keys, values = module._make(task_ids)  # pylint: disable=protected-access
        module.put_variable('cache', 'prompt_keys', keys.astype(cfg.dtype))
        module.put_variable('cache', 'prompt_values', values.astype(cfg.dtype))
        return read(module, task_ids)

      def read(module, task_ids):
        del task_ids
        return (module.get_variable('cache', 'prompt_keys'),
                module.get_variable('cache', 'prompt_values'))
      keys, values = nn.cond(index.value == 0, make, read, self, task_ids)
      index.value = index.value + 1
    if not cfg.scan_layers:
      keys, values = jnp.moveaxis(keys, 1, 0), jnp.moveaxis(values, 1, 0)
    batch, l = keys.shape[1], keys.shape[2]
    mask = layers.make_attention_mask(query_segments.astype(jnp.int32),
                                      jnp.ones((batch, l), jnp.int32), jnp.equal)
    return {'prompt_keys': keys, 'prompt_values': values}, mask


class Encoder(nn.Module):
  config: HyperPromptConfig
  shared_embedding: nn.Module
  prompt_generator: Optional[nn.Module] = None
  prompt_offset: int = 0
  adapter_generator: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, encoder_input_tokens, encoder_mask=None, deterministic=False,
               task_ids=None, segment_ids=None, input_prompts=None):
    cfg = self.config
    x = self.shared_embedding(encoder_input_tokens.astype('int32'))  # [batch, len, embed]
    real = encoder_input_tokens > 0  # [batch, len]
    if input_prompts is not None:  # 'prompt_tuning': [batch, l, embed] before the tokens
      x = jnp.concatenate([input_prompts.astype(x.dtype), x], axis=1)
    x = _dropout(cfg, x, deterministic).astype(cfg.dtype)
    length = x.shape[1]
    bias = _relpos(cfg)(length, length, True)  # [1, heads, len, len], shared by the layers
    tasks, query_segments = _task_context(task_ids, segment_ids, length, real)
    stack_prompts = _stack_prompts(cfg, 'encoder', self.prompt_generator, self.prompt_offset)
    prompts, prompt_mask = _batch_stack_prompts(cfg, stack_prompts, task_ids, query_segments)
    per_layer = _merge_layer_inputs(cfg, cfg.num_encoder_layers, prompts, _stack_adapters(
        cfg, self.adapter_generator, cfg.num_encoder_layers))
    x = _run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x,
                    (encoder_mask, bias, deterministic, prompt_mask, tasks), (2,),
                    per_layer, remat=True)
    x = layers.LayerNorm(dtype=cfg.dtype, name='encoder_norm')(x)
    return _dropout(cfg, x, deterministic, broadcast=False)


class Decoder(nn.Module):
  config: HyperPromptConfig
  shared_embedding: nn.Module
  prompt_generator: Optional[nn.Module] = None
  prompt_offset: int = 0
  adapter_generator: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, encoded, decoder_input_tokens, decoder_positions=None, decoder_mask=None,
               encoder_decoder_mask=None, deterministic=False, decode=False,
               max_decode_length=None, task_ids=None, segment_ids=None, query_real=None):
    cfg = self.config
    y = self.shared_embedding(decoder_input_tokens.astype('int32'))  # [batch, len, embed]
    y = _dropout(cfg, y, deterministic).astype(cfg.dtype)
    length = max_decode_length if decode and max_decode_length else y.shape[1]
    bias = _relpos(cfg)(length, length, False)  # [1, heads, len, len], shared by the layers
    tasks, query_segments = _task_context(task_ids, segment_ids, y.shape[1], query_real)
    if decode and self.prompt_generator is not None and cfg.prompted_layers('decoder'):
      prompts, prompt_mask = _DecodePrompts(cfg, self.prompt_generator, self.prompt_offset,
                                            name='decode_prompts')(task_ids, query_segments)
    else:
      stack_prompts = _stack_prompts(cfg, 'decoder', self.prompt_generator, self.prompt_offset)
      prompts, prompt_mask = _batch_stack_prompts(cfg, stack_prompts, task_ids, query_segments)
    per_layer = _merge_layer_inputs(cfg, cfg.num_decoder_layers, prompts, _stack_adapters(
        cfg, self.adapter_generator, cfg.num_decoder_layers))
    y = _run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, y,
                    (encoded, decoder_mask, encoder_decoder_mask, bias, deterministic, decode,
                     prompt_mask, tasks), (4, 5), per_layer, remat=not decode)
    y = layers.LayerNorm(dtype=cfg.dtype, name='decoder_norm')(y)
    y = _dropout(cfg, y, deterministic)
    if cfg.logits_via_embedding:
      return self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
    return layers.DenseGeneral(cfg.vocab_size, dtype=jnp.float32, kernel_axes=('embed', 'vocab'),
                               name='logits_dense')(y)  # [batch, len, vocab]


class Transformer(nn.Module):
  """Encoder-decoder T5.1.1 with task conditioning selected by `config.variant`."""
  config: HyperPromptConfig

  def setup(self):
    cfg = self.config
    self.shared_embedding = layers.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype,
        attend_dtype=jnp.float32, embedding_init=nn.initializers.normal(stddev=1.0),
        one_hot=cfg.one_hot_embedding, name='token_embedder')
    enc_gen = dec_gen = enc_adapters = dec_adapters = None
    dec_offset = 0
    if cfg.is_hyperprompt:
      n_enc, n_dec = cfg.prompted_layers('encoder'), cfg.prompted_layers('decoder')
      if cfg.share_encoder_decoder_prompts:
        shared = HyperPromptGenerator(cfg, n_enc + n_dec, name=SHARED_HYPERPROMPT)
        enc_gen = dec_gen = shared
        dec_offset = n_enc
      else:
        enc_gen = HyperPromptGenerator(cfg, n_enc, name=ENCODER_HYPERPROMPT) if n_enc else None
        dec_gen = HyperPromptGenerator(cfg, n_dec, name=DECODER_HYPERPROMPT) if n_dec else None
    if cfg.variant == 'hyperformer':
      tasks = HyperFormerTasks(cfg, name=HYPERFORMER)
      enc_adapters = HyperFormerGenerator(cfg, cfg.num_encoder_layers, tasks,
                                          name=ENCODER_HYPERFORMER)
      dec_adapters = HyperFormerGenerator(cfg, cfg.num_decoder_layers, tasks,
                                          name=DECODER_HYPERFORMER)
    if cfg.variant == 'prompt_tuning':
      self.input_prompts = InputPrompts(cfg, name=INPUT_PROMPTS)
    self.encoder = Encoder(cfg, self.shared_embedding, enc_gen, 0, enc_adapters)
    self.decoder = Decoder(cfg, self.shared_embedding, dec_gen, dec_offset, dec_adapters)

  @property
  def scan_layers(self) -> bool:
    """Read by t5x's models: a scanned cache is layers-first (beam search cache_offset=1)."""
    return self.config.scan_layers

  def _task_ids(self, task_ids, segment_ids, batch: int):
    """Validates task ids at the boundary; None for 'mtl'. Zeros while initialising."""
    cfg = self.config
    if not cfg.is_conditioned:
      return None
    if task_ids is None:
      if self.is_initializing():
        return jnp.zeros((batch,), jnp.int32)
      raise ValueError(f'variant {cfg.variant!r} needs task_ids ([batch] or [batch, '
                       'max_segments] int32); pass task_ids=... or use variant "mtl".')
    check_task_ids(task_ids, cfg.num_tasks)
    task_ids = jnp.asarray(task_ids).astype(jnp.int32)
    if task_ids.ndim not in (1, 2) or task_ids.shape[0] != batch:
      raise ValueError(f'task_ids must be [batch={batch}] or [batch, max_segments], got '
                       f'shape {task_ids.shape}.')
    if task_ids.ndim == 2 and segment_ids is None:
      if task_ids.shape[1] != 1:
        raise ValueError('Packed task_ids [batch, max_segments] need segment ids; pass the '
                         'segment ids of the packed rows or unpacked [batch] task_ids.')
      task_ids = task_ids[:, 0]
    return task_ids

  def _encoder_key_mask(self, encoder_input_tokens):
    """Which encoded positions are real: [batch, (l +) len]; input prompts always are."""
    real = encoder_input_tokens > 0
    if self.config.variant == 'prompt_tuning':
      batch = encoder_input_tokens.shape[0]
      real = jnp.concatenate([jnp.ones((batch, self.config.input_prompt_length), bool), real],
                             axis=1)
    return real

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=True, *,
             task_ids=None):
    """Encodes [batch, len] tokens -> [batch, len, emb_dim] ([batch, l+len, ...] for
    'prompt_tuning', l = input_prompt_length)."""
    cfg = self.config
    if encoder_input_tokens.ndim != 2:
      raise ValueError(f'encoder_input_tokens must be [batch, len], got {encoder_input_tokens.shape}.')
    task_ids = self._task_ids(task_ids, encoder_segment_ids, encoder_input_tokens.shape[0])
    input_prompts = None
    if cfg.variant == 'prompt_tuning':
      if encoder_segment_ids is not None:
        raise ValueError("variant 'prompt_tuning' does not support packed rows; turn packing "
                         'off in the feature converter (pack=False).')
      input_prompts = self.input_prompts(task_ids, self.shared_embedding.embedding)  # [b, l, d]
    real = self._encoder_key_mask(encoder_input_tokens)
    mask = layers.make_attention_mask(real, real, dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      mask = layers.combine_masks(mask, layers.make_attention_mask(
          encoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype), dtype=cfg.dtype)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout,
                        task_ids=task_ids, segment_ids=encoder_segment_ids,
                        input_prompts=input_prompts)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             enable_dropout=True, decode=False, max_decode_length=None, *, task_ids=None):
    """Decoder logits [batch, len, vocab]; `decode=True` uses the autoregressive cache."""
    cfg = self.config
    task_ids = self._task_ids(task_ids, decoder_segment_ids, decoder_input_tokens.shape[0])
    key_real = self._encoder_key_mask(encoder_input_tokens)
    if decode:
      decoder_mask = None
      query_real = jnp.ones_like(decoder_target_tokens, dtype=bool)
      encoder_decoder_mask = layers.make_attention_mask(query_real, key_real, dtype=cfg.dtype)
    else:
      query_real = decoder_target_tokens > 0
      decoder_mask = layers.make_decoder_mask(decoder_target_tokens, cfg.dtype,
                                              decoder_segment_ids=decoder_segment_ids)
      encoder_decoder_mask = layers.make_attention_mask(query_real, key_real, dtype=cfg.dtype)
    if encoder_segment_ids is not None:
      if decode:
        raise ValueError('Packed rows cannot be decoded incrementally: encoder_segment_ids was '
                         'passed to decode with decode=True.')
      encoder_decoder_mask = layers.combine_masks(encoder_decoder_mask, layers.make_attention_mask(
          decoder_segment_ids, encoder_segment_ids, jnp.equal, dtype=cfg.dtype), dtype=cfg.dtype)
    return self.decoder(
        encoded, decoder_input_tokens, decoder_positions=decoder_positions,
        decoder_mask=decoder_mask, encoder_decoder_mask=encoder_decoder_mask,
        deterministic=not enable_dropout, decode=decode, max_decode_length=max_decode_length,
        task_ids=task_ids, segment_ids=decoder_segment_ids, query_real=query_real)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, enable_dropout: bool = True, decode: bool = False,
               task_ids=None):
    """Teacher-forced logits [batch, target_len, vocab] (t5x's signature plus task_ids)."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                          enable_dropout=enable_dropout, task_ids=task_ids)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, enable_dropout=enable_dropout,
                       decode=decode, task_ids=task_ids)
