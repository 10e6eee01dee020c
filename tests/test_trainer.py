"""The train step: microbatching and the trainable-parameter filter."""

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from hyperprompt_jax import models, partitioning, train, trainer
from hyperprompt_jax.network import CONDITIONING_PARAMS_REGEX, Transformer
from tests.helpers import CONDITIONED, init_params, random_tokens, shift_right, tiny_config


def _batch():
  targets = random_tokens(2, (4, 5), pad_from=[5, 3, 4, 5])
  return {'encoder_input_tokens': random_tokens(1, (4, 7)),
          'decoder_target_tokens': targets, 'decoder_input_tokens': shift_right(targets),
          'decoder_loss_weights': (targets > 0).astype(np.int32),
          'task_ids': np.array([0, 1, 2, 1], np.int32)}


def test_microbatching_gives_the_same_update():
  """Gradients accumulated over 2 microbatches equal one full-batch gradient."""
  cfg = tiny_config('global')
  model = Transformer(cfg)
  params = init_params(cfg)
  batch = _batch()
  optimizer = optax.sgd(1.0)
  out = []
  for k in (1, 2):
    state = {'step': np.int32(0), 'params': params, 'opt_state': optimizer.init(params)}
    step = jax.jit(trainer.make_train_step(model, optimizer, cfg.num_tasks, num_microbatches=k))
    out.append(step(state, batch))
  np.testing.assert_allclose(out[0][1]['loss'], out[1][1]['loss'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               out[0][0]['params'], out[1][0]['params'])


@pytest.mark.parametrize('variant', CONDITIONED)
@pytest.mark.parametrize('frozen_backbone', [False, True])
def test_one_step_changes_exactly_the_trainable_parameters(variant, frozen_backbone):
  cfg = tiny_config(variant)
  params = init_params(cfg)
  regex = CONDITIONING_PARAMS_REGEX if frozen_backbone else '.*'
  optimizer = trainer.make_optimizer(1e-2, params, trainable_regex=regex)
  state = {'step': np.int32(0), 'params': params, 'opt_state': optimizer.init(params)}
  step = jax.jit(trainer.make_train_step(Transformer(cfg), optimizer, cfg.num_tasks))
  batch = _batch()
  new, _ = step(state, batch)
  before = traverse_util.flatten_dict(params, sep='/')
  after = traverse_util.flatten_dict(new['params'], sep='/')
  t5 = set(traverse_util.flatten_dict(init_params(tiny_config('mtl')), sep='/'))
  conditioning = set(before) - t5  # everything the variant adds to T5.1.1
  assert conditioning
  for name in before:
    changed = not np.array_equal(before[name], after[name])
    assert changed == (name in conditioning or not frozen_backbone), name


def test_a_filter_that_matches_nothing_is_an_error():
  with pytest.raises(ValueError, match='No parameter matches'):
    trainer.make_optimizer(1e-3, init_params(tiny_config('mtl')), trainable_regex='^nothing$')


@pytest.mark.parametrize('donate_state, donated', [(None, False), (True, True), (False, False)])
def test_the_cpu_step_keeps_its_input_state_unless_told(donate_state, donated):
  """On the CPU, XLA copies every donated parameter each step (7.8% of an emb-256 step), so
  the trainer donates the state only on accelerators or when train.donate_state says so."""
  cfg = tiny_config('global')
  model = Transformer(cfg)
  params = init_params(cfg)
  part = partitioning.Partitioner(1, 1, 1, devices=jax.devices()[:1])
  param_shardings = part.param_shardings(models.init_variables_abstract(model))
  optimizer = trainer.make_optimizer(1e-3, params)
  step, shardings = train.jit_train_step(model, optimizer, part, params, param_shardings,
                                         donate_state=donate_state)
  state = jax.device_put({'step': np.int32(0), 'params': params,
                          'opt_state': optimizer.init(params)}, shardings)
  with part.context():
    compiled = step.lower(state, part.shard_batch(_batch(), 4)).compile()
  aliased = compiled.memory_analysis().alias_size_in_bytes
  assert (aliased > 0) == donated, aliased


def test_steps_per_second_counts_the_timed_steps_without_evaluation_and_saving():
  now = [100.0]
  rate = train.StepRate(0, clock=lambda: now[0])
  now[0] += 10.0                       # steps 1-10: 10 s
  assert rate.since_last(10) == pytest.approx(1.0)
  now[0] += 4.0                        # steps 11-14: 4 s
  rate.exclude(30.0)                   # an evaluation and a save: 30 s more
  now[0] += 30.0
  now[0] += 2.0                        # steps 15-16
  assert rate.since_last(16) == pytest.approx(1.0)
  now[0] += 0.5                        # the last, partial interval: one step in 0.5 s
  assert rate.since_last(17) == pytest.approx(2.0)
