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


def strip_multirc_markup(text):
  """MultiRC paragraphs carry HTML ('<b>Sent 1: </b>...<br>'): as T5 does, each '<br>'
  becomes a space and '<b>' / '</b>' are dropped (on the whole input string)."""
  text = tf.strings.regex_replace(text, '<br>', ' ')
  return tf.strings.regex_replace(text, '</?b>', '')


@seqio.map_over_dataset
def multirc(ex):
  inputs = tf.strings.join(['multirc question:', ex['question'], 'answer:', ex['answer'],
                            'paragraph:', ex['paragraph']], separator=' ')
  group = ex['idx']['paragraph'] * 100000 + ex['idx']['question']
  return {'inputs': strip_multirc_markup(inputs),
          'targets': _label_text(ex['label'], ['False', 'True']),
          'label': ex['label'], 'group': group}


# Two WSC texts whose TFDS annotation T5 corrects: {text: (text as T5 words it, the word
# index of the pronoun in it)}. In the first, 'him,"' is one word and the text ends in a
# space; in the second, span2_index points at 'use' instead of 'it'.
_PONY = ('The boy continued to whip the pony , and eventually the pony threw him over. John '
         'laughed out quite loud. "Good for him," he said. ')
_PONY_FIXED = ('The boy continued to whip the pony , and eventually the pony threw him over. '
               'John laughed out quite loud. "Good for him ," he said.')
_PEBBLE = ('When they had eventually calmed down a bit , and had gotten home, Mr. Farley put '
           'the magic pebble in an iron safe . Some day they might want to use it , but really '
           'for now, what more could they wish for?')
WSC_CORRECTIONS = {
    _PONY: (_PONY_FIXED, len(_PONY_FIXED.split(' ')) - 4),  # the second 'him'
    _PEBBLE: (_PEBBLE, _PEBBLE.split(' ').index('it')),
}


def wsc_marked_text(text, pronoun, pronoun_index):
  """T5's WSC input text: the word at `pronoun_index` is replaced by 'X' (the words joined
  again by single spaces), then every ' X ' becomes ' *<pronoun>* ' (T5's two steps, kept
  exactly, corrections of two texts included)."""
  index = tf.cast(pronoun_index, tf.int32)
  for original, (fixed, fixed_index) in WSC_CORRECTIONS.items():
    hit = tf.equal(text, original)
    text = tf.where(hit, tf.constant(fixed), text)
    index = tf.where(hit, tf.constant(fixed_index, tf.int32), index)
  words = tf.strings.split(text, ' ')
  blanked = tf.strings.join([tf.strings.reduce_join(words[:index], separator=' '), 'X',
                             tf.strings.reduce_join(words[index + 1:], separator=' ')],
                            separator=' ')
  replacement = tf.strings.regex_replace(pronoun, r'\\', r'\\\\')  # literal in RE2
  return tf.strings.regex_replace(blanked, ' X ', tf.strings.join([' *', replacement, '* ']))


@seqio.map_over_dataset
def wsc(ex):
  """'wsc: <text with the pronoun marked *like this*>' -> the candidate referent (span1's
  text); `label` says whether it is the pronoun's referent (T5's wsc_simple)."""
  text = wsc_marked_text(ex['text'], ex['span2_text'], ex['span2_index'])
  return {'inputs': tf.strings.join(['wsc:', text], separator=' '),
          'targets': ex['span1_text'], 'label': ex['label'], 'idx': ex['idx']}


def _regex_literal(text):
  return tf.strings.regex_replace(text, r'([\\.^$|?*+()\[\]{}])', r'\\\1')


@seqio.map_over_dataset
def dpr(ex):
  """Definite Pronoun Resolution as WSC: 'wsc: <sentence with the first ' <pronoun>'
  followed by a space, '.' or ',' marked *like this*>' -> the correct candidate (T5 trains
  WSC with it)."""
  pattern = tf.strings.join([' (', _regex_literal(ex['pronoun']), r')( |\.|,)'])
  sentence = tf.strings.regex_replace(ex['sentence'], pattern, r' *\1*\2',
                                      replace_global=False)
  return {'inputs': tf.strings.join(['wsc:', sentence], separator=' '),
          'targets': tf.gather(ex['candidates'], tf.cast(ex['label'], tf.int32))}


def keep_positive(ds):
  """WSC training uses only examples whose span1 is the pronoun's referent (as T5 does)."""
  return ds.filter(lambda ex: ex['label'] == 1)


def tail_preprocessors(task_id: int):
  """What follows a task's own preprocessors: tokenisation, seqio's cache placeholder, then
  the task id (after the placeholder, so a seqio cache never stores an id: ids come from
  the task table at read time) and EOS."""
  return [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), add_task_id(task_id),
          seqio.preprocessors.append_eos_after_trim]


def add_task_id(task_id: int):
  """Adds the `task_ids` feature: rank 1, one entry (the converter packs these per segment)."""

  @seqio.map_over_dataset
  def fn(ex):
    return dict(ex, task_ids=tf.constant([task_id], tf.int32))
  return fn
