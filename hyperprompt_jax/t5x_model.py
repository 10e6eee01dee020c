"""HyperPrompt in t5x: the only module that knows t5x (imported only by t5x gin files).

`HyperPromptEncoderDecoderModel` is t5x's `EncoderDecoderModel` with task ids: they travel in
the batch (from `TaskIdEncDecFeatureConverter`) and reach the module in training, evaluation,
scoring and decoding, including the cache initialisation; under beam search they are
expanded by `num_decodes` exactly as t5x expands the batch.
"""

from typing import Any, Mapping, Optional

import gin
import jax.numpy as jnp
from t5x import adafactor, models

from hyperprompt_jax import partitioning
from hyperprompt_tasks.feature_converter import TaskIdEncDecFeatureConverter


def additional_axis_rules():
  """Logical axis rules for HyperPrompt's own axes (t5x's standard rules cover T5's):
  `partitioning.standard_logical_axis_rules.additional_rules = @...additional_axis_rules()`."""
  return list(partitioning.HYPERPROMPT_AXIS_RULES)


def logical_factor_rules():
  """t5x Adafactor factor rules: t5x's standard ones plus ours."""
  rules = dict(adafactor.standard_logical_factor_rules())
  names = {'row': adafactor.FactorDim.ROW, 'column': adafactor.FactorDim.COLUMN,
           'batch': adafactor.FactorDim.BATCH, 'none': adafactor.FactorDim.NONE}
  rules.update({k: names[v] for k, v in partitioning.ADAFACTOR_FACTOR_RULES.items()})
  return rules


class _TaskBoundModule:
  """Stands in for the module during t5x's decoding: every `apply` gets the batch's task ids,
  repeated `num_decodes` times when t5x has expanded the batch for beam search."""

  def __init__(self, module, task_ids, num_decodes: int):
    self._module, self._task_ids, self._num_decodes = module, task_ids, num_decodes

  def __getattr__(self, name):
    return getattr(self._module, name)

  def _ids_for(self, batch_size: int):
    ids = self._task_ids
    if ids is None or ids.shape[0] == batch_size:
      return ids
    if ids.shape[0] * self._num_decodes == batch_size:
      return jnp.repeat(ids, self._num_decodes, axis=0)  # t5x's flat_batch_beam_expand order
    raise ValueError(f'task_ids for {ids.shape[0]} rows cannot serve a call with {batch_size}.')

  def apply(self, variables, *args, **kwargs):
    first = args[0] if args else next(
        kwargs[k] for k in ('encoded', 'encoder_input_tokens') if k in kwargs)
    return self._module.apply(variables, *args, task_ids=self._ids_for(first.shape[0]), **kwargs)


class HyperPromptEncoderDecoderModel(models.EncoderDecoderModel):
  """t5x EncoderDecoderModel that passes `task_ids` to a `hyperprompt_jax.network.Transformer`."""

  FEATURE_CONVERTER_CLS = TaskIdEncDecFeatureConverter

  def _compute_logits(self, params, batch: Mapping[str, jnp.ndarray], dropout_rng=None,
                      mutable=False, other_variables: Optional[Any] = None):
    rngs = {'dropout': dropout_rng} if dropout_rng is not None else None
    return self.module.apply(
        {'params': params, **(other_variables or {})},
        batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'],
        encoder_segment_ids=batch.get('encoder_segment_ids'),
        decoder_segment_ids=batch.get('decoder_segment_ids'),
        encoder_positions=batch.get('encoder_positions'),
        decoder_positions=batch.get('decoder_positions'),
        decode=False, enable_dropout=rngs is not None, rngs=rngs, mutable=mutable,
        task_ids=batch.get('task_ids'))

  def predict_batch_with_aux(self, params, batch, rng=None, decoder_params=None,
                             return_all_decodes=None, num_decodes=None,
                             prompt_with_targets=False):
    if num_decodes is None:
      num_decodes = self._default_decoder_params.num_decodes
    module = self.module
    self.module = _TaskBoundModule(module, batch.get('task_ids'), num_decodes)
    try:
      return super().predict_batch_with_aux(
          params, batch, rng=rng, decoder_params=decoder_params,
          return_all_decodes=return_all_decodes, num_decodes=num_decodes,
          prompt_with_targets=prompt_with_targets)
    finally:
      self.module = module


@gin.configurable
def _built_model(model=gin.REQUIRED):
  """gin's MODEL, built (for checking gin/t5x files without running t5x's launcher)."""
  return model
