"""The network: shapes for every variant, plain T5 for 'mtl', task conditioning, packing,
cached decoding and task-id validation."""

import dataclasses
import functools
import importlib.util
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hyperprompt_jax import models
from hyperprompt_jax.hypernetworks import HyperFormerGenerator, HyperFormerTasks
from hyperprompt_jax.network import Transformer
from tests import t5_reference
from tests.helpers import (ALL_VARIANTS, CONDITIONED, dots_by_place, init_params,
                           random_tokens, scanned, shift_right, tiny_config)

B, LI, LT = 3, 9, 6


def _batch(seed=0):
  inputs = random_tokens(seed, (B, LI), pad_from=[LI, 5, 7])
  targets = random_tokens(seed + 1, (B, LT), pad_from=[LT, 4, 3])
  return inputs, shift_right(targets), targets


@functools.lru_cache(maxsize=None)
def _forward(config):
  """One jitted forward per config (reused across tests: shapes compile once)."""
  model = Transformer(config)
  return jax.jit(lambda p, batch, t: model.apply({'params': p}, *batch, enable_dropout=False,
                                                 task_ids=t))


def _logits(config, params, batch, task_ids):
  return np.asarray(_forward(config)(params, tuple(batch), task_ids))


@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_every_variant_gives_finite_logits_of_t5_shapes(variant):
  config = tiny_config(variant)
  params = init_params(config)
  batch = _batch()
  task_ids = None if variant == 'mtl' else np.array([0, 2, 1], np.int32)
  logits = _logits(config, params, batch, task_ids)
  assert logits.shape == (B, LT, config.vocab_size)
  assert np.isfinite(logits).all()
  encoded = Transformer(config).apply({'params': params}, batch[0], enable_dropout=False,
                                      task_ids=task_ids, method=Transformer.encode)
  extra = config.input_prompt_length if variant == 'prompt_tuning' else 0
  assert encoded.shape == (B, LI + extra, config.emb_dim)


def test_mtl_matches_independent_reference():
  config = tiny_config('mtl')
  params = init_params(config)
  inputs, dec_inputs, targets = _batch()
  logits = _logits(config, params, (inputs, dec_inputs, targets), None)
  expected = t5_reference.t5_logits(jax.device_get(params), inputs, dec_inputs, targets,
                                    config.num_heads)
  real = targets > 0
  np.testing.assert_allclose(logits[real], expected[real], atol=2e-4, rtol=1e-4)


def _zeroed(params, pattern):
  flat = traverse_util.flatten_dict(params, sep='/')
  return traverse_util.unflatten_dict(
      {k: jnp.zeros_like(v) if re.search(pattern, k) else v for k, v in flat.items()}, sep='/')


# What makes each adapter's output zero: Houlsby's up-projection and its bias; HyperFormer++'s
# generated layer-norm scale and bias (the norm is the adapter's last operation).
_ADAPTER_OUTPUT = {'adapter': r'_adapter/up', 'hyperformer': r'norm_(scale|bias)_generator'}


@pytest.mark.parametrize('placement', ['attention_mlp', 'mlp'])
@pytest.mark.parametrize('variant', ['adapter', 'hyperformer'])
def test_adapters_with_a_zero_output_compute_plain_t5(variant, placement):
  """Each adapter is y + f(y) before the residual: with f's last map zero the variant
  computes exactly what 'mtl' computes with the same T5 weights; with its real (perturbed)
  weights it does not."""
  config = tiny_config(variant, adapter_placement=placement)
  params = init_params(config)
  mtl_params = init_params(tiny_config('mtl'))
  batch = _batch()
  ids = np.array([0, 1, 2], np.int32)
  mtl = _logits(tiny_config('mtl'), mtl_params, batch, None)
  merged = _merge(params, mtl_params)
  got = _logits(config, _zeroed(merged, _ADAPTER_OUTPUT[variant]), batch, ids)
  np.testing.assert_allclose(got, mtl, atol=1e-5)
  assert np.abs(_logits(config, merged, batch, ids) - mtl).max() > 1e-3


def test_houlsby_adapters_start_near_the_identity():
  """Houlsby et al.'s near-identity initialisation (std 1e-3): at initialisation 'adapter'
  is within a hair of 'mtl' with the same T5 weights, but not equal to it."""
  config = tiny_config('adapter')
  params = _merge(init_params(config, perturb=False), init_params(tiny_config('mtl')))
  batch = _batch()
  mtl = _logits(tiny_config('mtl'), init_params(tiny_config('mtl')), batch, None)
  got = _logits(config, params, batch, np.array([0, 1, 2], np.int32))
  assert 0 < np.abs(got - mtl).max() < 1e-3


@pytest.mark.parametrize('block', ['self_attention', 'mlp'])
def test_each_houlsby_adapter_acts_on_its_own_block(block):
  """Zeroing one block's adapters leaves the other's effect: both placements are live, and
  'mlp' placement has no self-attention adapters at all."""
  config = tiny_config('adapter')
  params = init_params(config)
  batch = _batch()
  ids = np.array([0, 1, 2], np.int32)
  full = _logits(config, params, batch, ids)
  without = _logits(config, _zeroed(params, f'{block}_adapter/up'), batch, ids)
  assert np.abs(full - without).max() > 1e-3
  names = traverse_util.flatten_dict(init_params(tiny_config('adapter', adapter_placement='mlp'),
                                                 perturb=False), sep='/')
  assert not any('self_attention_adapter' in n for n in names)
  assert sum('mlp_adapter/up' in n for n in names) == 2 * 4  # up, up_bias in 4 layers


def test_hyperformer_layer_norm_is_conditional_and_blocks_are_embedded():
  """HyperFormer++: the post-adapter layer norm's scale is generated per task (two tasks get
  different scales), and the block-type embedding makes the self-attention and feed-forward
  adapters of one layer differ."""
  config = tiny_config('hyperformer')
  params = init_params(config)
  gen = HyperFormerGenerator(config, config.num_encoder_layers, HyperFormerTasks(config))
  variables = {'params': {**params['encoder_hyperformer'], 'tasks': params['hyperformer']}}
  attention = gen.apply(variables, 0, 'self_attention')
  mlp = gen.apply(variables, 0, 'mlp')
  assert attention.norm_scale.shape == (config.num_tasks, config.emb_dim)
  assert np.abs(attention.norm_scale[0] - attention.norm_scale[1]).max() > 1e-4
  assert np.abs(attention.down - mlp.down).max() > 1e-4
  assert params['encoder_hyperformer']['block_embedding'].shape == (2, config.task_embedding_dim)


def _merge(target, source):
  if not isinstance(target, dict):
    return source
  return {k: _merge(v, source[k]) if k in source else v for k, v in target.items()}


@pytest.mark.parametrize('variant', CONDITIONED)
def test_task_id_changes_its_row_and_only_its_row(variant):
  config = tiny_config(variant)
  params = init_params(config)
  batch = _batch()
  a = _logits(config, params, batch, np.array([0, 1, 2], np.int32))
  b = _logits(config, params, batch, np.array([0, 2, 2], np.int32))
  assert np.allclose(a[0], b[0], atol=1e-6) and np.allclose(a[2], b[2], atol=1e-6)
  assert np.abs(a[1] - b[1]).max() > 1e-3


@pytest.mark.parametrize('variant', CONDITIONED)
def test_missing_or_out_of_range_task_ids_are_rejected(variant):
  config = tiny_config(variant)
  params = init_params(config)
  batch = _batch()
  model = Transformer(config)
  with pytest.raises(ValueError, match='needs task_ids'):
    model.apply({'params': params}, *batch, enable_dropout=False)
  for bad in ([0, 3, 1], [0, -1, 1]):
    with pytest.raises(ValueError, match='outside \\[0, 3\\)'):
      model.apply({'params': params}, *batch, enable_dropout=False,
                  task_ids=np.array(bad, np.int32))
    # Inside jit the host check cannot run: the bad row must become NaN, never another task.
    logits = _logits(config, params, batch, np.array(bad, np.int32))
    assert np.isnan(logits[1]).any()
    assert np.isfinite(logits[0]).all() and np.isfinite(logits[2]).all()


def test_t5x_network_parity():
  """Same tree and logits as t5x's own examples/t5 network (skipped without t5x)."""
  if importlib.util.find_spec('t5x') is None:
    pytest.skip('t5x is not installed')
  from t5x.examples.t5 import network as t5x_network
  config = tiny_config('mtl')
  t5x_config = t5x_network.T5Config(**{f.name: getattr(config, f.name) for f in
                                        dataclasses.fields(t5x_network.T5Config)})
  x = jnp.ones((1, 4), jnp.int32)
  theirs = t5x_network.Transformer(t5x_config).init(jax.random.PRNGKey(0), x, x, x,
                                                     enable_dropout=False)
  ours = Transformer(config).init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)
  shapes = lambda t: jax.tree.map(lambda a: a.shape, dict(t))
  assert shapes(ours['params']) == shapes(theirs['params'])
  assert jax.tree.map(lambda a: tuple(a.names), dict(ours['params_axes'])) == jax.tree.map(
      lambda a: tuple(a.names), dict(theirs['params_axes']))
  params = init_params(config)
  batch = _batch()
  expected = t5x_network.Transformer(t5x_config).apply({'params': params}, *batch,
                                                       enable_dropout=False)
  np.testing.assert_allclose(_logits(config, params, batch, None), expected, atol=1e-5)


# ---- packing -------------------------------------------------------------------------------

def _pack(examples):
  """Packs [(inputs, targets, task)] into one row: t5x/seqio packed feature layout."""
  enc, enc_seg, enc_pos, tgt, dec_in, dec_seg, dec_pos, tasks = ([] for _ in range(8))
  for s, (inp, tar, task) in enumerate(examples, start=1):
    enc += list(inp); enc_seg += [s] * len(inp); enc_pos += list(range(len(inp)))
    tgt += list(tar); dec_in += [0] + list(tar[:-1]); dec_seg += [s] * len(tar)
    dec_pos += list(range(len(tar))); tasks.append(task)
  return enc, enc_seg, enc_pos, tgt, dec_in, dec_seg, dec_pos, tasks


@pytest.mark.parametrize('variant', ['share', 'sep', 'global', 'adapter', 'hyperformer'])
@pytest.mark.parametrize('training, scan', [(False, False), (True, False), (True, True)])
def test_packed_rows_equal_unpacked_examples(variant, training, scan):
  """training=True (dropout rate 0): the packed rows take the training path, where prompts
  join the keys and values, and still equal forward-only calls on single examples. With
  scan=True the packed rows go through scanned layers."""
  config = tiny_config(variant)
  params = init_params(config)
  packed_config, packed_params = scanned(config, params) if scan else (config, params)
  rng = np.random.RandomState(3)
  rows = [[(rng.randint(2, 61, 4), rng.randint(2, 61, 3), 0),
           (rng.randint(2, 61, 5), rng.randint(2, 61, 2), 2)],
          [(rng.randint(2, 61, 6), rng.randint(2, 61, 4), 1),
           (rng.randint(2, 61, 3), rng.randint(2, 61, 3), 0),
           (rng.randint(2, 61, 2), rng.randint(2, 61, 1), 2)]]
  LEN_I, LEN_T, S = 14, 10, 4
  fields = [np.zeros((len(rows), n), np.int32) for n in (LEN_I,) * 3 + (LEN_T,) * 4 + (S,)]
  for r, row in enumerate(rows):
    for f, values in zip(fields, _pack(row)):
      f[r, :len(values)] = values
  enc, enc_seg, enc_pos, tgt, dec_in, dec_seg, dec_pos, task_ids = fields
  model = Transformer(packed_config)
  packed = jax.jit(lambda p: model.apply(
      {'params': p}, enc, dec_in, tgt, enc_seg, dec_seg, enc_pos, dec_pos,
      enable_dropout=training, task_ids=task_ids))(packed_params)
  for r, row in enumerate(rows):
    offset = 0
    for inp, tar, task in row:
      single = _logits(config, params, (inp[None], shift_right(tar[None]), tar[None]),
                       np.array([task], np.int32))
      np.testing.assert_allclose(np.asarray(packed)[r, offset:offset + len(tar)], single[0],
                                 atol=2e-5, rtol=1e-5)
      offset += len(tar)


def test_prompt_tuning_rejects_packed_rows():
  config = tiny_config('prompt_tuning')
  params = init_params(config)
  seg = np.ones((1, 5), np.int32)
  x = random_tokens(0, (1, 5))
  with pytest.raises(ValueError, match='does not support packed rows'):
    Transformer(config).apply({'params': params}, x, x, x, seg, seg, enable_dropout=False,
                              task_ids=np.zeros((1, 2), np.int32))


# ---- cached decoding -------------------------------------------------------------------------

@pytest.mark.parametrize('scan', [False, True], ids=['unscanned', 'scanned'])
@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_cached_decoding_equals_teacher_forced_forward(variant, scan):
  """Token by token with the cache == the full forward, with the cache made t5x's way
  (apply with the trained parameters) and flax's way (init, fresh parameters). Scanned: the
  cache is stacked like the layers (layers first, as t5x's cache_offset=1 expects)."""
  config = tiny_config(variant)
  params = init_params(config)
  inputs, dec_inputs, targets = _batch()
  targets = random_tokens(7, (B, LT))  # full length: every step is compared
  dec_inputs = shift_right(targets)
  task_ids = None if variant == 'mtl' else np.array([2, 0, 1], np.int32)
  full = _logits(config, params, (inputs, dec_inputs, targets), task_ids)
  if scan:
    config, params = scanned(config, params)
  model = Transformer(config)
  encoded = model.apply({'params': params}, inputs, enable_dropout=False, task_ids=task_ids,
                        method=Transformer.encode)
  _, state = model.apply({'params': params}, encoded, inputs, dec_inputs, targets,
                         enable_dropout=False, decode=True, task_ids=task_ids,
                         mutable=['cache'], method=Transformer.decode)
  flax_cache = model.init(jax.random.PRNGKey(5), inputs, dec_inputs, targets,
                          enable_dropout=False, decode=True, task_ids=task_ids)['cache']
  assert jax.tree.map(jnp.shape, flax_cache) == jax.tree.map(jnp.shape, state['cache'])
  # After the first token the prompt generator is never read again: poisoning its
  # parameters from then on changes nothing.
  poisoned = flax.traverse_util.unflatten_dict({
      k: (jnp.full_like(v, jnp.nan) if any('hyperprompt' in part for part in k) else v)
      for k, v in flax.traverse_util.flatten_dict(params).items()})
  if variant in ('share', 'sep', 'global'):
    assert 'decode_prompts' in state['cache']['decoder']

  @jax.jit
  def step(step_params, cache, token):
    logits, state = model.apply({'params': step_params, 'cache': cache}, encoded, inputs, token,
                                token,
                                enable_dropout=False, decode=True, max_decode_length=LT,
                                task_ids=task_ids, mutable=['cache'], method=Transformer.decode)
    return logits, state['cache']

  for cache in (state['cache'], flax_cache):
    for t in range(LT):
      logits, cache = step(params if t == 0 else poisoned, cache, dec_inputs[:, t:t + 1])
      np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=2e-5, rtol=1e-5)
    # The prompts are not in the key/value cache: it holds exactly the decoded length.
    if scan:
      cached_key = cache['decoder']['layers']['self_attention']['cached_key']
      assert cached_key.shape == (config.num_decoder_layers, B, config.num_heads,
                                  config.head_dim, LT)
      if 'decode_prompts' in cache['decoder']:
        assert cache['decoder']['decode_prompts']['prompt_keys'].shape[:2] == (
            config.num_decoder_layers, B)
    else:
      cached_key = cache['decoder']['layers_0']['self_attention']['cached_key']
      assert cached_key.shape == (B, config.num_heads, config.head_dim, LT)


@pytest.mark.parametrize('variant, generator', [('global', 'decode_prompts/'),
                                                ('hyperformer', 'decoder_hyperformer/')])
def test_greedy_decoding_makes_the_decoder_conditioning_once_per_call(variant, generator):
  """The decoder's hyper-prompts and HyperFormer++'s generated adapters depend only on the
  parameters and the task ids: compiled greedy decoding never computes them once per token.
  The prompts are made inside the token loop only in the branch of the first step (a
  conditional), the adapter weights are hoisted out of the loop by XLA."""
  config = tiny_config(variant)
  hlo = models._compiled_greedy(config, 5, -1).lower(  # pylint: disable=protected-access
      init_params(config), random_tokens(0, (B, 6)), np.array([2, 0, 1], np.int32)
  ).compile().as_text()
  outside, every_token, first_token = dots_by_place(hlo, generator)
  assert every_token == 0, (outside, every_token, first_token)
  assert (first_token > 0) if variant == 'global' else (outside > 0 and first_token == 0)
  # The token loop itself is found: each step's own projections run inside it.
  assert dots_by_place(hlo, 'decoder/layers_0/self_attention/query/')[1] >= 1


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match='Unknown variant'):
    tiny_config('hyper')
  with pytest.raises(ValueError, match='num_tasks must be a positive integer'):
    tiny_config('global', num_tasks=0)
  with pytest.raises(ValueError, match="dtype 'float42' is not a dtype"):
    tiny_config('global', dtype='float42')


def test_bfloat16_compute_keeps_float32_params():
  config = tiny_config('global', dtype=jnp.bfloat16)
  params = init_params(config, perturb=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = _logits(config, params, _batch(), np.array([0, 1, 2], np.int32))
  assert np.isfinite(logits).all()


@pytest.mark.parametrize('variant', ['mtl', 'global', 'prompt_tuning'])
def test_gather_and_one_hot_embeddings_give_the_same_logits_and_gradients(variant):
  batch = _batch()
  task_ids = None if variant == 'mtl' else np.array([2, 0, 1], np.int32)
  out = {}
  for lookup in ('one_hot', 'gather'):
    config = tiny_config(variant, embedding_lookup=lookup)
    assert config.one_hot_embedding == (lookup == 'one_hot')
    params = init_params(config)
    model = Transformer(config)
    loss = lambda p: model.apply({'params': p}, *batch, enable_dropout=False,  # pylint: disable=cell-var-from-loop
                                 task_ids=task_ids).sum()
    out[lookup] = (_logits(config, params, batch, task_ids),
                   jax.grad(loss)(params)['token_embedder']['embedding'])
  np.testing.assert_allclose(out['gather'][0], out['one_hot'][0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out['gather'][1], out['one_hot'][1], atol=1e-4, rtol=1e-4)
  assert tiny_config(variant).one_hot_embedding == (jax.default_backend() == 'tpu')
  with pytest.raises(ValueError, match='Unknown embedding_lookup'):
    tiny_config(variant, embedding_lookup='table')
