"""The analytic model FLOPs (the MFU numerator) agree with XLA's count of the compiled
forward pass where no work is wasted (gather embedding), variant by variant."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from hyperprompt_jax import flops
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

# A T5.1.1-shaped model big enough that matmuls dominate elementwise work.
MID = HyperPromptConfig(vocab_size=2048, emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024,
                        num_encoder_layers=3, num_decoder_layers=3,
                        mlp_activations=('gelu', 'linear'), dropout_rate=0.0, num_tasks=8,
                        prompt_length=16, embedding_lookup='gather')
B, E, D = 8, 64, 16


def _xla_forward_flops(cfg):
  model = Transformer(cfg)
  x = jnp.ones((1, 4), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, x, x,
                                             enable_dropout=False))['params']
  tid = None if cfg.variant == 'mtl' else jnp.zeros((B,), jnp.int32)
  fn = jax.jit(lambda p, e, d, t: model.apply({'params': p}, e, d, d, enable_dropout=False,
                                              task_ids=t))
  cost = fn.lower(params, jnp.ones((B, E), jnp.int32), jnp.ones((B, D), jnp.int32),
                  tid).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


@pytest.mark.parametrize('variant', ['mtl', 'share', 'sep', 'global', 'prompt_tuning'])
def test_analytic_flops_match_xla_without_waste(variant):
  cfg = dataclasses.replace(MID, variant=variant)
  analytic = flops.forward_flops(cfg, B, E, D)
  assert _xla_forward_flops(cfg) == pytest.approx(analytic, rel=0.03)
  assert flops.train_step_flops(cfg, B, E, D) == 3 * analytic


def test_one_hot_embedding_is_hardware_work_not_model_work():
  gather = dataclasses.replace(MID, variant='mtl')
  one_hot = dataclasses.replace(gather, embedding_lookup='one_hot')
  extra = _xla_forward_flops(one_hot) - _xla_forward_flops(gather)
  # a [tokens, V] x [V, d] contraction for the input and the target tokens
  assert extra == pytest.approx(2 * MID.vocab_size * MID.emb_dim * B * (E + D), rel=0.02)
  assert flops.forward_flops(one_hot, B, E, D) == flops.forward_flops(gather, B, E, D)


def test_conditioning_flops_grow_with_tasks_not_with_the_batch():
  cfg = dataclasses.replace(MID, variant='global')
  base = dataclasses.replace(MID, variant='mtl')
  gen = [flops.forward_flops(cfg, b, E, D) - flops.forward_flops(base, b, E, D)
         - b * 4 * cfg.num_heads * cfg.head_dim * cfg.prompt_length * (E + D) * 3
         for b in (1, 8)]  # minus the prompt columns' attention (per row, 3 layers each)
  assert gen[0] == pytest.approx(gen[1]) and gen[0] > 0
