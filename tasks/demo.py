"""The offline demo benchmark: five generated text-to-text tasks, mixture `hyperprompt_demo`.

Four tasks read the very same review ('review: the cafe zorbo in lima : the price was great
and the staff was not poor .') and must answer differently: its sentiment, its topic, a 0-5
rating (regression, rounded to 0.2 like STS-B) and the product's name (extraction). The fifth
is sentence-pair paraphrase detection. Since the inputs carry no task name, only the task id
tells a model which answer is wanted: task interference is real and conditioning matters.
"""

import random
from typing import Dict, List

import numpy as np
import seqio
import tensorflow as tf

from hyperprompt_tasks import metrics, task_table, text_to_text
from hyperprompt_tasks.vocab import demo_vocabulary, output_features

SPLIT_SIZES = {'train': 5000, 'validation': 200}
SEEDS = {'train': 1, 'validation': 2}

NAMES = ['zorbo', 'kelvy', 'mantu', 'pirex', 'dovala', 'quenta', 'rasko', 'tibble', 'vorne',
         'yaska', 'brindle', 'corvo', 'fenwa', 'gilmo', 'halder', 'jotun', 'lumex', 'nadir',
         'ospry', 'sundo']
TOPICS = {'food': ['cafe', 'bakery', 'restaurant', 'diner'],
          'travel': ['hotel', 'hostel', 'resort', 'cruise'],
          'tech': ['phone', 'laptop', 'camera', 'tablet'],
          'music': ['album', 'concert', 'festival', 'band'],
          'sport': ['gym', 'bike', 'stadium', 'racket']}
CITIES = ['paris', 'lima', 'oslo', 'cairo', 'tokyo', 'quito', 'rome', 'delhi']
ASPECTS = ['service', 'price', 'quality', 'design', 'staff', 'location']
QUALITIES = {'superb': 2, 'wonderful': 2, 'good': 1, 'nice': 1, 'awful': -2, 'terrible': -2,
             'poor': -1, 'dull': -1}
SYNONYMS = {'superb': 'wonderful', 'wonderful': 'superb', 'good': 'nice', 'nice': 'good',
            'awful': 'terrible', 'terrible': 'awful', 'poor': 'dull', 'dull': 'poor'}


def _review(rng: random.Random):
  while True:
    topic = rng.choice(sorted(TOPICS))
    noun, name, city = rng.choice(TOPICS[topic]), rng.choice(NAMES), rng.choice(CITIES)
    a1, a2 = rng.sample(ASPECTS, 2)
    clauses, score = [], 0
    for aspect in (a1, a2):
      quality, negate = rng.choice(sorted(QUALITIES)), rng.random() < 0.25
      score += -QUALITIES[quality] // 2 if negate else QUALITIES[quality]
      clauses.append(f'the {aspect} was {"not " if negate else ""}{quality}')
    if score != 0:
      break
  text = f'review: the {noun} {name} in {city} : {clauses[0]} and {clauses[1]} .'
  rating = round((score + 4) / 8 * 5 * 5) / 5
  return text, {'sentiment': 'positive' if score > 0 else 'negative', 'topic': topic,
                'rating': f'{rating:.1f}', 'extract': name}


def _pair(rng: random.Random):
  topic = rng.choice(sorted(TOPICS))
  noun, name, city = rng.choice(TOPICS[topic]), rng.choice(NAMES), rng.choice(CITIES)
  aspect, quality = rng.choice(ASPECTS), rng.choice(sorted(QUALITIES))
  s1 = f'the {noun} {name} in {city} has {quality} {aspect} .'
  same = rng.random() < 0.5
  if not same:
    change = rng.choice(['name', 'city', 'quality'])
    if change == 'name':
      name = rng.choice([n for n in NAMES if n != name])
    elif change == 'city':
      city = rng.choice([c for c in CITIES if c != city])
    else:
      quality = rng.choice([q for q in QUALITIES if np.sign(QUALITIES[q]) != np.sign(
          QUALITIES[quality])])
  s2 = f'in {city} , {name} the {noun} has {SYNONYMS[quality]} {aspect} .'
  return (f'pair sentence1: {s1} sentence2: {s2}',
          'equivalent' if same else 'not_equivalent')


def examples(split: str) -> Dict[str, List[Dict[str, str]]]:
  """Every demo task's examples of a split, generated deterministically."""
  rng = random.Random(SEEDS[split])
  out = {task: [] for task in task_table.DEMO}
  for _ in range(SPLIT_SIZES[split]):
    text, answers = _review(rng)
    for task, target in answers.items():
      out[task].append({'inputs': text, 'targets': target})
    inputs, target = _pair(rng)
    out['paraphrase'].append({'inputs': inputs, 'targets': target})
  return out


_CACHE: Dict[str, Dict[str, List[Dict[str, str]]]] = {}


def _dataset_fn(task):
  def fn(split, shuffle_files=False, seed=None):
    if split not in _CACHE:
      _CACHE[split] = examples(split)
    rows = _CACHE[split][task]
    return tf.data.Dataset.from_tensor_slices({
        'inputs': [r['inputs'] for r in rows], 'targets': [r['targets'] for r in rows]})
  return fn


@seqio.map_over_dataset
def _strip(ex):
  return {'inputs': ex['inputs'], 'targets': ex['targets']}


DEMO_METRICS = {
    'sentiment': (metrics.label_to_id(['negative', 'positive']), [metrics.accuracy]),
    'topic': (None, [metrics.accuracy]),
    'rating': (metrics.to_float, [metrics.pearson_spearman]),
    'extract': (None, [metrics.accuracy]),
    'paraphrase': (metrics.label_to_id(['not_equivalent', 'equivalent']),
                   [metrics.accuracy, metrics.f1]),
}


def _decode_text(output, example=None, is_target=False):
  return output.decode('utf-8') if isinstance(output, bytes) else output


def register_all():
  features = output_features(demo_vocabulary(), task_table.num_tasks('demo'))
  names = []
  for task, tid in task_table.DEMO.items():
    post, metric_fns = DEMO_METRICS[task]
    name = task_table.task_name('demo', task)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn(task), splits=list(SPLIT_SIZES),
                                        num_input_examples=dict(SPLIT_SIZES)),
        preprocessors=[_strip] + text_to_text.tail_preprocessors(tid),
        postprocess_fn=post or _decode_text,
        metric_fns=metric_fns,
        output_features=features)
    task_table.TASK_IDS[name] = tid
    names.append(name)
  seqio.MixtureRegistry.add('hyperprompt_demo', [(n, 1.0) for n in names])
  # The first four tasks: a model trained on them gets the fifth (paraphrase, id 4) added
  # later by learning only its conditioning (README "Adding a task").
  seqio.MixtureRegistry.add('hyperprompt_demo_first4', [(n, 1.0) for n in names[:4]])
