"""The parameter report against a hand count, and the axis names of every parameter."""

import jax
import jax.numpy as jnp
import pytest

from hyperprompt_jax import param_report, partitioning
from hyperprompt_jax.network import Transformer
from tests.helpers import ALL_VARIANTS, tiny_config


def _hand_count(cfg):
  d, hd, m, V = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  ne, nd, T, l = cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_tasks, cfg.prompt_length
  b, tp, t, a = cfg.hyper_bottleneck, cfg.task_embedding_dim, cfg.layer_task_embedding_dim, cfg.adapter_dim
  mlp = 3 * d * m  # gated: wi_0, wi_1, wo
  t5 = (V * d + cfg.num_heads * 32 + ne * (2 * d + 4 * d * hd + mlp) + d
        + cfg.num_heads * 32 + nd * (3 * d + 8 * d * hd + mlp) + d + d * V)
  M = ne + nd
  projector = 2 * tp * t + t + t * t + t
  task = {
      'mtl': 0,
      'prompt_tuning': T * l * d,
      'share': T * l * d + M * 2 * (d * b + b * hd),
      'sep': T * l * d + M * T * 2 * (d * b + b * hd),
      'global': T * l * d + T * tp + M * tp + projector + 2 * (t * d * b + t * b * hd),
      'adapter': M * T * (d * a + a + a * d + d),
      'hyperformer': T * tp + M * tp + projector + t * (d * a + a + a * d + d),
  }[cfg.variant]
  return t5, task


@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_report_matches_hand_count(variant):
  cfg = tiny_config(variant)
  t5, task = _hand_count(cfg)
  r = param_report.report(cfg)
  assert (r['t5'], r['task'], r['total']) == (t5, task, t5 + task)
  assert r['task_percent'] == pytest.approx(100 * task / (t5 + task))


def test_xxl_global_is_under_half_a_percent():
  r = param_report.report(param_report.t511_config('xxl', variant='global'))
  assert r['total'] > 11e9 and r['task_percent'] < 0.5


@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_every_parameter_has_logical_axes_covered_by_the_rules(variant):
  cfg = tiny_config(variant)
  x = jnp.ones((1, 4), jnp.int32)
  variables = jax.eval_shape(lambda r: Transformer(cfg).init(r, x, x, x, enable_dropout=False),
                             jax.random.PRNGKey(0))
  specs = partitioning.params_logical_specs(variables)
  params = variables['params']
  assert jax.tree.structure(params) == jax.tree.structure(
      specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  known = {name for name, _ in partitioning.logical_axis_rules()}
  for spec, p in zip(jax.tree.leaves(specs, is_leaf=lambda s: isinstance(
      s, jax.sharding.PartitionSpec)), jax.tree.leaves(params)):
    assert len(spec) == len(p.shape) and set(spec) <= known, spec
  for name in ('tasks', 'prompt', 'hyper_bottleneck', 'adapter'):
    assert name in partitioning.ADAFACTOR_FACTOR_RULES
