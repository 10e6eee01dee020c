"""Casting GLUE / SuperGLUE examples to text-to-text as T5 does (Raffel et al. 2020, App. D).

inputs: '<task> <feature>: <text> <feature>: <text> ...' with features in T5's order,
targets: the label's name; stsb: the score rounded to 0.2 ('3.8'); test labels (-1): '<unk>'.
"""

from typing import Optional, Sequence

import seqio
import tensorflow as tf


def _label_text(label, label_names):
  names = tf.constant(list(label_names))
  return tf.where(label < 0, tf.constant('<unk>'),
                  tf.gather(names, tf.maximum(tf.cast(label, tf.int32), 0)))


def _join_features(prefix, ex, feature_names):
  parts = [prefix]
  for name in feature_names:
    parts += [f'{name}:', ex[name]]
  return tf.strings.join(parts, separator=' ')


def classification(prefix: str, feature_names: Sequence[str],
                   label_names: Optional[Sequence[str]], keep=('idx', 'label')):
  """Preprocessor for sentence(-pair) tasks; label_names=None means stsb-style regression."""

  @seqio.map_over_dataset
  def fn(ex):
    if label_names is None:
      targets = tf.strings.as_string(tf.round(tf.cast(ex['label'], tf.float32) * 5) / 5,
                                     precision=1)
    else:
      targets = _label_text(ex['label'], label_names)
    out = {'inputs': _join_features(prefix, ex, feature_names), 'targets': targets}
    out.update({k: ex[k] for k in keep if k in ex})
    return out
  return fn


def record(ds):
  """ReCoRD: one example per answer; '@highlight' lines become sentences."""

  def per_example(ex):
    passage = tf.strings.regex_replace(ex['passage'], r'(\.|\?|\!|\"|\')\n@highlight\n', r'\1 ')
    passage = tf.strings.regex_replace(passage, r'\n@highlight\n', '. ')
    entities = tf.strings.reduce_join(ex['entities'], separator=', ')
    inputs = tf.strings.join(['record query:', ex['query'], 'entities:', entities, 'passage:',
                              passage], separator=' ')
    answers = ex['answers']
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant(['<unk>']))
    n = tf.size(targets)
    group = ex['idx']['passage'] * 100000 + ex['idx']['query']
    return tf.data.Dataset.from_tensor_slices({
        'inputs': tf.fill([n], inputs), 'targets': targets,
        'answers': tf.tile(answers[None], [n, 1]), 'group': tf.fill([n], group)})
  return ds.flat_map(per_example)


@seqio.map_over_dataset
def multirc(ex):
  inputs = tf.strings.join(['multirc question:', ex['question'], 'answer:', ex['answer'],
                            'paragraph:', ex['paragraph']], separator=' ')
  group = ex['idx']['paragraph'] * 100000 + ex['idx']['question']
  return {'inputs': inputs, 'targets': _label_text(ex['label'], ['False', 'True']),
          'label': ex['label'], 'group': group}


@seqio.map_over_dataset
def wsc(ex):
  """'wsc: <text with the pronoun marked *like this*>' -> the referent (span1 text)."""
  words = tf.strings.split(ex['text'], ' ')
  start = tf.cast(ex['span2_index'], tf.int32)
  n = tf.size(tf.strings.split(ex['span2_text'], ' '))
  marked = tf.strings.join(['*', tf.strings.reduce_join(words[start:start + n], separator=' '),
                            '*'])
  text = tf.strings.reduce_join(
      tf.concat([words[:start], marked[None], words[start + n:]], 0), separator=' ')
  return {'inputs': tf.strings.join(['wsc:', text], separator=' '),
          'targets': ex['span1_text'], 'label': ex['label'], 'idx': ex['idx']}


def keep_positive(ds):
  """WSC training uses only examples whose span1 is the pronoun's referent (as T5 does)."""
  return ds.filter(lambda ex: ex['label'] == 1)


def add_task_id(task_id: int):
  """Adds the `task_ids` feature: rank 1, one entry (the converter packs these per segment)."""

  @seqio.map_over_dataset
  def fn(ex):
    return dict(ex, task_ids=tf.constant([task_id], tf.int32))
  return fn
