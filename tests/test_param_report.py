"""The parameter report against a hand count, the axis names of every parameter (each with a
sharding rule and an Adafactor factor rule), and the conditioning-parameter regex."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from hyperprompt_jax import param_report, partitioning
from hyperprompt_jax.network import CONDITIONING_PARAMS_REGEX, Transformer
from tests.helpers import ALL_VARIANTS, tiny_config

# Every (variant, option) combination that creates other parameters.
LAYOUTS = [dict(variant=v) for v in ALL_VARIANTS] + [
    dict(variant=v, adapter_placement='mlp') for v in ('adapter', 'hyperformer')] + [
    dict(variant=v, share_encoder_decoder_prompts=False) for v in ('share', 'sep', 'global')] + [
    dict(variant='global', encoder_prompts=False), dict(variant='sep', decoder_prompts=False)]


def _hand_count(cfg):
  d, hd, m, V = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  ne, nd, T, l = cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_tasks, cfg.prompt_length
  b, tp, t, a = cfg.hyper_bottleneck, cfg.task_embedding_dim, cfg.layer_task_embedding_dim, cfg.adapter_size
  H, blocks = cfg.hyperformer_hidden_dim, len(cfg.adapter_blocks)
  adapter = d * a + a + a * d + d  # D, its bias, U, its bias
  mlp = 3 * d * m  # gated: wi_0, wi_1, wo
  t5 = (V * d + cfg.num_heads * 32 + ne * (2 * d + 4 * d * hd + mlp) + d
        + cfg.num_heads * 32 + nd * (3 * d + 8 * d * hd + mlp) + d + d * V)
  M = ne + nd
  # hyper-prompts: P_layers prompted layers; G generators (one shared, or one per prompted stack)
  P_layers = ne * cfg.encoder_prompts + nd * cfg.decoder_prompts
  G = 1 if cfg.share_encoder_decoder_prompts else cfg.encoder_prompts + cfg.decoder_prompts
  projector = 2 * tp * t + t + t * t + t
  task = {
      'mtl': 0,
      'prompt_tuning': T * cfg.input_prompt_length * d,
      'share': G * T * l * d + P_layers * 2 * (d * b + b * hd),
      'sep': G * T * l * d + P_layers * T * 2 * (d * b + b * hd),
      'global': G * (T * l * d + T * tp + projector + 2 * (t * d * b + t * b * hd))
                + P_layers * tp,
      'adapter': M * blocks * T * adapter,
      # task embeddings; per stack: layer and block embeddings, the projector 3t' -> H -> t
      # with its LayerNorm, and a generator (t x size kernel + bias) for every adapter weight
      # and for the conditional layer norm's scale and bias (d each)
      'hyperformer': T * tp + M * tp + 2 * (blocks * tp + 3 * tp * H + H + H * t + t + 2 * t
                                            + (t + 1) * (adapter + 2 * d)),
  }[cfg.variant]
  return t5, task


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda d: '-'.join(f'{v}' for v in d.values()))
def test_report_matches_hand_count(layout):
  cfg = tiny_config(**layout)
  t5, task = _hand_count(cfg)
  r = param_report.report(cfg)
  assert (r['t5'], r['task'], r['total']) == (t5, task, t5 + task)
  assert r['task_percent'] == pytest.approx(100 * task / (t5 + task))


def test_t5_base_baselines_match_numbers_computed_by_hand():
  """T5.1.1 Base, 8 tasks (d 768, 12 + 12 layers, adapter d/32 = 24, t' = t = 64, H = 128)."""
  task = lambda variant, **kw: param_report.report(
      param_report.size_config('base', variant=variant, **kw))['task']
  # Houlsby: 24 layers x 2 adapters x 8 tasks x (768*24 + 24 + 24*768 + 768 = 37,656)
  assert task('adapter') == 14_459_904
  assert task('adapter', adapter_placement='mlp') == 7_229_952
  # HyperFormer++: per stack 65 x (37,656 + 2 x 768) generator weights = 2,547,480, projector
  # 3*64*128 + 128 + 128*64 + 64 + LayerNorm 128 = 33,088, block embeddings 128; twice, plus
  # 24 layer and 8 task embeddings of 64
  assert task('hyperformer') == 2 * (2_547_480 + 33_088 + 128) + 24 * 64 + 8 * 64 == 5_163_440
  assert task('prompt_tuning') == 8 * 100 * 768  # 100 input prompt vectors per task


def test_xxl_global_is_under_half_a_percent():
  r = param_report.report(param_report.size_config('xxl', variant='global'))
  assert r['total'] > 11e9 and r['task_percent'] < 0.5


def _abstract_variables(cfg):
  x = jnp.ones((1, 4), jnp.int32)
  return jax.eval_shape(lambda r: Transformer(cfg).init(r, x, x, x, enable_dropout=False),
                        jax.random.PRNGKey(0))


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda d: '-'.join(f'{v}' for v in d.values()))
def test_every_logical_axis_has_a_sharding_rule_and_a_factor_rule(layout):
  variables = _abstract_variables(tiny_config(**layout))
  specs = partitioning.params_logical_specs(variables)
  is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)
  params = variables['params']
  assert jax.tree.structure(params) == jax.tree.structure(specs, is_leaf=is_spec)
  for dims in (1, 2):
    known = {name for name, _ in partitioning.logical_axis_rules(dims)}
    t5_axes = {name for name, _ in partitioning.T5_AXIS_RULES} | set(
        partitioning.REPLICATED_T5_AXES)
    for spec, p in zip(jax.tree.leaves(specs, is_leaf=is_spec), jax.tree.leaves(params)):
      assert len(spec) == len(p.shape), spec
      assert set(spec) <= known, spec  # a sharding rule for every axis
      # t5x's standard factor rules cover T5's axes; ours must cover the rest
      assert set(spec) - t5_axes <= set(partitioning.ADAFACTOR_FACTOR_RULES), spec


@pytest.mark.parametrize('layout', LAYOUTS, ids=lambda d: '-'.join(f'{v}' for v in d.values()))
def test_conditioning_regex_matches_exactly_what_a_variant_adds_to_t5(layout):
  names = lambda cfg: set(traverse_util.flatten_dict(_abstract_variables(cfg)['params'],
                                                     sep='/'))
  added = names(tiny_config(**layout)) - names(tiny_config('mtl'))
  matched = {n for n in names(tiny_config(**layout)) if re.search(CONDITIONING_PARAMS_REGEX, n)}
  assert matched == added
