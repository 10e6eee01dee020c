"""Postprocessors and the benchmarks' official metrics (all in percent, as T5 reports them)."""

import collections
import re
import string
from typing import Mapping, Sequence

import numpy as np
import scipy.stats


def _text(x) -> str:
  return x.decode('utf-8') if isinstance(x, (bytes, np.bytes_)) else str(x)


# ---- postprocessors: fn(output, example=None, is_target=False) --------------------------------

def label_to_id(label_names: Sequence[str]):
  """Maps a label name to its class index; anything else to -1 (counted as wrong)."""
  lookup = {name: i for i, name in enumerate(label_names)}

  def fn(output, example=None, is_target=False):
    return lookup.get(_text(output).strip(), -1)
  return fn


def to_float(output, example=None, is_target=False):
  try:
    return float(_text(output))
  except ValueError:
    return -1.0


def multirc(output, example=None, is_target=False):
  """MultiRC answers are scored per question: keep the question's group with the value."""
  value = int(example['label']) if is_target else int(_text(output).strip() == 'True')
  return {'group': int(example['group']), 'value': value}


def record(output, example=None, is_target=False):
  if is_target:
    return {'group': int(example['group']), 'answers': [_text(a) for a in example['answers']]}
  return _text(output)


def _wsc_words(text):
  text = re.sub(r'[^\w\s]', '', text.lower())
  return [w for w in text.split() if w not in ('a', 'an', 'the', 'that', 'this', 'these',
                                                'those', 'his', 'her', 'their')]


def wsc(output, example=None, is_target=False):
  """Target: the label; prediction: whether the predicted referent names span1 (word subset
  either way, ignoring articles and possessives)."""
  if is_target:
    return int(example['label'])
  predicted, referent = set(_wsc_words(_text(output))), set(_wsc_words(_text(example['targets_pretokenized'])))
  return int(bool(predicted) and (predicted <= referent or referent <= predicted))


# ---- metrics: fn(targets, predictions) -> {name: value} -------------------------------------

def accuracy(targets, predictions):
  return {'accuracy': 100.0 * float(np.mean(np.asarray(targets) == np.asarray(predictions)))}


def _binary_f1(targets, predictions):
  t, p = np.asarray(targets) == 1, np.asarray(predictions) == 1
  tp = np.sum(t & p)
  denom = 2 * tp + np.sum(~t & p) + np.sum(t & ~p)
  return 100.0 * 2 * tp / denom if denom else 0.0


def f1(targets, predictions):
  return {'f1': float(_binary_f1(targets, predictions))}


def macro_f1(num_classes: int):
  def fn(targets, predictions):
    t, p = np.asarray(targets), np.asarray(predictions)
    return {'macro_f1': float(np.mean([_binary_f1(t == c, p == c) for c in range(num_classes)]))}
  return fn


def matthews(targets, predictions):
  t, p = np.asarray(targets) == 1, np.asarray(predictions) == 1
  tp, tn = np.sum(t & p), np.sum(~t & ~p)
  fp, fn_ = np.sum(~t & p), np.sum(t & ~p)
  denom = np.sqrt(float((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)))
  return {'matthews_corr': 100.0 * float((tp * tn - fp * fn_) / denom) if denom else 0.0}


def pearson_spearman(targets, predictions):
  t, p = np.asarray(targets, float), np.asarray(predictions, float)
  if np.ptp(t) == 0 or np.ptp(p) == 0:  # undefined for constant input: no correlation
    return {'pearson': 0.0, 'spearman': 0.0}
  return {'pearson': 100.0 * float(scipy.stats.pearsonr(t, p)[0]),
          'spearman': 100.0 * float(scipy.stats.spearmanr(t, p)[0])}


def multirc_f1a_em(targets, predictions):
  """F1 over all answers, and exact match of all of a question's answers."""
  t = np.asarray([x['value'] for x in targets])
  p = np.asarray([x['value'] for x in predictions])
  groups = collections.defaultdict(list)
  for target, ok in zip(targets, t == p):
    groups[target['group']].append(ok)
  return {'f1a': float(_binary_f1(t, p)),
          'exact_match': 100.0 * float(np.mean([all(v) for v in groups.values()]))}


def _squad_normalize(text: str) -> str:
  text = ''.join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(prediction: str, answer: str) -> float:
  p, a = _squad_normalize(prediction).split(), _squad_normalize(answer).split()
  common = sum((collections.Counter(p) & collections.Counter(a)).values())
  if common == 0:
    return 0.0
  precision, recall = common / len(p), common / len(a)
  return 2 * precision * recall / (precision + recall)


def record_f1_em(targets, predictions):
  """Max over a query's answers, one prediction per query (examples were split per answer)."""
  seen, f1s, ems = set(), [], []
  for target, prediction in zip(targets, predictions):
    if target['group'] in seen:
      continue
    seen.add(target['group'])
    answers = target['answers'] or ['']
    f1s.append(max(_token_f1(prediction, a) for a in answers))
    ems.append(max(float(_squad_normalize(prediction) == _squad_normalize(a)) for a in answers))
  return {'f1': 100.0 * float(np.mean(f1s)), 'exact_match': 100.0 * float(np.mean(ems))}


# ---- benchmark averages ------------------------------------------------------------------------

def task_score(metrics: Mapping[str, float]) -> float:
  """A task's score: the mean of its metrics (e.g. MRPC = (accuracy + F1) / 2)."""
  return float(np.mean(list(metrics.values())))


def benchmark_score(per_task: Mapping[str, Mapping[str, float]], tasks: Sequence[str]) -> float:
  """GLUE / SuperGLUE score: the mean over the benchmark's tasks of each task's score.

  `per_task` maps short task names to metric dicts. MNLI's matched and mismatched accuracies
  are averaged into one MNLI score (key 'mnli' and 'mnli_mismatched').
  """
  missing = [t for t in tasks if t not in per_task]
  if missing:
    raise ValueError(f'Benchmark score needs every task; missing {missing}.')
  scores = []
  for t in tasks:
    score = task_score(per_task[t])
    if t == 'mnli' and 'mnli_mismatched' in per_task:
      score = (score + task_score(per_task['mnli_mismatched'])) / 2
    scores.append(score)
  return float(np.mean(scores))
