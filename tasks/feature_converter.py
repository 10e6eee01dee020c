"""A seqio encoder-decoder feature converter that carries task ids to the model.

    task features:  inputs [len], targets [len], task_ids [1]
    model features: t5x's encoder/decoder features plus
                    task_ids: [] per example when unpacked ([batch] once batched);
                              [max_segments] when packed: entry s is the task of segment
                              s+1, unused slots hold 0.

t5x's TASK_FEATURE_LENGTHS name only inputs and targets: the converter adds the task-id
length itself. seqio's packer treats 0 as padding, so ids are packed as id+1 and shifted back
afterwards: a packed task 0 is never lost.
"""

from typing import Mapping

import gin
import seqio
import tensorflow as tf

Spec = seqio.FeatureConverter.FeatureSpec


@gin.configurable(module='hyperprompt_tasks')
class TaskIdEncDecFeatureConverter(seqio.FeatureConverter):
  """seqio.EncDecFeatureConverter's features plus `task_ids` (see module docstring).

  max_segments: the most examples packed into one row (a gin constant; default 8).
  """

  TASK_FEATURES = {
      'inputs': Spec(dtype=tf.int32),
      'targets': Spec(dtype=tf.int32),
      'task_ids': Spec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {
      'encoder_segment_ids': tf.int32,
      'decoder_segment_ids': tf.int32,
      'encoder_positions': tf.int32,
      'decoder_positions': tf.int32,
  }

  def __init__(self, pack: bool = True, use_custom_packing_ops: bool = False,
               max_segments: int = 8, **kwargs):
    if max_segments < 1:
      raise ValueError(f'max_segments must be at least 1, got {max_segments}.')
    self.max_segments = max_segments
    self.MODEL_FEATURES = {
        'encoder_input_tokens': Spec(dtype=tf.int32),
        'decoder_target_tokens': Spec(dtype=tf.int32),
        'decoder_input_tokens': Spec(dtype=tf.int32),
        'decoder_loss_weights': Spec(dtype=tf.int32),
        'task_ids': Spec(dtype=tf.int32, rank=1 if pack else 0),
    }
    super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops, **kwargs)

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    lengths = dict(task_feature_lengths)
    lengths['task_ids'] = self.max_segments if self.pack else 1
    return super().__call__(ds, lengths)

  def _convert_features(self, ds, task_feature_lengths):
    ds = ds.map(lambda ex: dict(ex, task_ids=ex['task_ids'] + 1))  # 0 is padding to the packer
    ds = self._pack_or_pad(ds, task_feature_lengths)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, features):
    targets = features['targets']
    task_ids = tf.maximum(features['task_ids'] - 1, 0)  # unused slots -> 0
    out = {
        'encoder_input_tokens': features['inputs'],
        'decoder_target_tokens': targets,
        'decoder_input_tokens': seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=features.get('targets_segment_ids'), bos_id=self.bos_id),
        'decoder_loss_weights': tf.cast(tf.not_equal(targets, 0), tf.int32),
        'task_ids': task_ids if self.pack else task_ids[0],
    }
    if self.pack:
      out['encoder_segment_ids'] = features['inputs_segment_ids']
      out['decoder_segment_ids'] = features['targets_segment_ids']
      out['encoder_positions'] = features['inputs_positions']
      out['decoder_positions'] = features['targets_positions']
    return out

  def get_model_feature_lengths(self, task_feature_lengths):
    inputs, targets = task_feature_lengths['inputs'], task_feature_lengths['targets']
    lengths = {'encoder_input_tokens': inputs, 'decoder_target_tokens': targets,
               'decoder_input_tokens': targets, 'decoder_loss_weights': targets,
               'task_ids': self.max_segments if self.pack else 1}
    if self.pack:
      lengths.update({'encoder_segment_ids': inputs,
                      'decoder_segment_ids': targets, 'encoder_positions': inputs,
                      'decoder_positions': targets})
    return lengths
