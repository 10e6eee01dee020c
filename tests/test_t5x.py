"""The t5x model class (skipped without t5x): task ids reach the module in training,
scoring and decoding, and beam search expands them with the batch."""

import functools

import jax
import numpy as np
import pytest

pytest.importorskip('t5x.models')
from t5x import adafactor, decoding  # pylint: disable=g-import-not-at-top

import hyperprompt_tasks
from hyperprompt_jax import t5x_model
from hyperprompt_jax.network import Transformer
from tests.helpers import ALL_VARIANTS, init_params, random_tokens, shift_right, tiny_config


def _model(decode_fn=decoding.beam_search):
  cfg = tiny_config('global', vocab_size=128)
  vocab = hyperprompt_tasks.demo_vocabulary()
  model = t5x_model.HyperPromptEncoderDecoderModel(
      module=Transformer(cfg), input_vocabulary=vocab, output_vocabulary=vocab,
      optimizer_def=adafactor.Adafactor(logical_factor_rules=t5x_model.logical_factor_rules()),
      decode_fn=decode_fn)
  return cfg, model


def _batch(task_ids):
  inputs = random_tokens(0, (3, 9), vocab=128, pad_from=[9, 6, 7])
  targets = random_tokens(1, (3, 5), vocab=128)
  return {'encoder_input_tokens': inputs, 'decoder_input_tokens': shift_right(targets),
          'decoder_target_tokens': targets, 'decoder_loss_weights': np.ones_like(targets),
          'task_ids': np.asarray(task_ids, np.int32)}


def test_training_and_scoring_see_task_ids():
  cfg, model = _model()
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {'encoder_input_tokens': (3, 9), 'decoder_input_tokens': (3, 5)})
  assert 'hyperprompt' in variables['params'] and 'params_axes' in variables
  params = init_params(cfg)
  batch = _batch([0, 1, 2])
  ours = Transformer(cfg).apply({'params': params}, batch['encoder_input_tokens'],
                                batch['decoder_input_tokens'], batch['decoder_target_tokens'],
                                enable_dropout=False, task_ids=batch['task_ids'])
  np.testing.assert_allclose(model._compute_logits(params, batch), ours, atol=1e-6)
  loss_a, _ = model.loss_fn(params, batch, None)
  loss_b, _ = model.loss_fn(params, _batch([2, 1, 0]), None)
  assert np.isfinite(loss_a) and abs(float(loss_a) - float(loss_b)) > 1e-4
  scores = model.score_batch(params, batch)
  assert scores.shape == (3,) and np.isfinite(scores).all()


def test_beam_search_expands_task_ids_with_the_batch():
  cfg, model = _model()
  params = init_params(cfg)
  batch = _batch([2, 0, 1])
  together, _ = model.predict_batch_with_aux(params, batch, num_decodes=3,
                                             return_all_decodes=True)
  for row in range(3):
    alone = {k: v[row:row + 1] for k, v in batch.items()}
    single, _ = model.predict_batch_with_aux(params, alone, num_decodes=3,
                                             return_all_decodes=True)
    np.testing.assert_array_equal(np.asarray(together)[row], np.asarray(single)[0])


def test_greedy_decoding_matches_our_decoder_and_depends_on_the_task():
  cfg, model = _model(functools.partial(decoding.temperature_sample, topk=1))
  params = init_params(cfg)
  batch = _batch([2, 0, 1])
  t5x_out, _ = model.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(0))
  from hyperprompt_jax.models import greedy_decode  # pylint: disable=g-import-not-at-top
  ours = greedy_decode(Transformer(cfg), params, batch['encoder_input_tokens'],
                       batch['task_ids'], max_length=5)
  np.testing.assert_array_equal(np.asarray(t5x_out), np.asarray(ours))
  other, _ = model.predict_batch_with_aux(params, _batch([2, 2, 1]), rng=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(other)[[0, 2]], np.asarray(t5x_out)[[0, 2]])
  assert not np.array_equal(np.asarray(other)[1], np.asarray(t5x_out)[1])  # row 1: task 0 -> 2


@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_factor_and_axis_rules_cover_every_axis_of_every_variant(variant):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
  from hyperprompt_jax import models, partitioning  # pylint: disable=g-import-not-at-top
  variables = models.init_variables_abstract(Transformer(tiny_config(variant)))
  specs = traverse_util.flatten_dict(partitioning.params_logical_specs(variables))
  axes = {a for spec in specs.values() for a in spec}
  factor_rules = t5x_model.logical_factor_rules()
  for dims in (1, 2):
    rules = dict(t5x_partitioning.standard_logical_axis_rules(
        parameter_partitioning_dims=dims, additional_rules=t5x_model.additional_axis_rules()))
    assert axes <= set(rules), axes - set(rules)
  assert axes <= set(factor_rules), axes - set(factor_rules)
  assert factor_rules['tasks'] == adafactor.FactorDim.BATCH


@pytest.mark.parametrize('size', ['small', 'base', 'xxl'])
def test_t5x_model_gin_files_build_the_model(size):
  import gin  # pylint: disable=g-import-not-at-top
  from hyperprompt_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.add_config_file_search_path(gin_utils.GIN_DIR)
  gin.parse_config_files_and_bindings(
      [f'{gin_utils.GIN_DIR}/models/{size}.gin', f'{gin_utils.GIN_DIR}/t5x/hyperprompt.gin',
       f'{gin_utils.GIN_DIR}/variants/global.gin'],
      ['DROPOUT_RATE = 0.1', 'hyperprompt_jax.t5x_model._built_model.model = %MODEL'])
  model = t5x_model._built_model()  # pylint: disable=protected-access
  gin.clear_config()
  assert isinstance(model, t5x_model.HyperPromptEncoderDecoderModel)
  assert model.module.config.variant == 'global' and model.module.config.dropout_rate == 0.1
  assert model.FEATURE_CONVERTER_CLS is hyperprompt_tasks.TaskIdEncDecFeatureConverter
