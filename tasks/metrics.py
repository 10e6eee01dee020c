"""Postprocessors and the benchmarks' official metrics, under T5's names and with T5's
treatment of invalid predictions (all in percent, as T5 reports them).

Postprocessors map an output that is no label to -1 (a class of its own). Accuracy counts it
wrong; binary F1 (`f1`, MultiRC's) counts it as the wrong class (T5's f1_score_with_invalid:
a false positive on a negative example, a false negative on a positive one); Matthews
correlation is the multiclass coefficient over the labels present, -1 included (sklearn's,
which T5 uses); `mean_3class_f1` averages the F1 of the real classes only."""

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
  """Maps a label name to its class index; anything else to -1 (counted as wrong). The
  lookup is exact, as T5's string_label_to_class_id: ' positive' is no label."""
  lookup = {name: i for i, name in enumerate(label_names)}

  def fn(output, example=None, is_target=False):
    return lookup.get(_text(output), -1)
  return fn


def to_float(output, example=None, is_target=False):
  try:
    return float(_text(output))
  except ValueError:
    return -1.0


def multirc(output, example=None, is_target=False):
  """MultiRC answers are scored per question: keep the question's group with the value
  (1 'True', 0 'False', -1 anything else)."""
  if is_target:
    value = int(example['label'])
  else:
    value = {'True': 1, 'False': 0}.get(_text(output), -1)  # exact, as T5
  return {'group': int(example['group']), 'value': value}


def record(output, example=None, is_target=False):
  if is_target:
    return {'group': int(example['group']), 'answers': [_text(a) for a in example['answers']]}
  return _text(output)


# Words T5's WSC scoring ignores when it compares a predicted referent with span1's text.
WSC_IGNORED_WORDS = frozenset(
    'a an each every few her his many much my our some that the their these this those which '
    'whose your'.split())


def _wsc_words(text: str) -> str:
  """Lower-cased, stripped, split on single spaces, ignored words dropped, joined again."""
  return ' '.join(w for w in text.strip().lower().split(' ') if w not in WSC_IGNORED_WORDS)


def wsc(output, example=None, is_target=False):
  """T5's wsc_simple scoring. Target: the label (is span1 the pronoun's referent?).
  Prediction: -1 when nothing but ignored words was predicted (always wrong); 0 when one of
  the prediction and span1 has an apostrophe and the other not ('Bob' vs "Bob's hat");
  else whether the word set of one contains the other's. Punctuation counts: 'Tom.' is no
  match for 'Tom'."""
  if is_target:
    return int(example['label'])
  predicted = _wsc_words(_text(output))
  if not predicted:
    return -1
  referent = _wsc_words(_text(example['targets_pretokenized']))
  if ("'" in predicted) != ("'" in referent):
    return 0
  p, r = set(predicted.split(' ')), set(referent.split(' '))
  return int(p <= r or r <= p)


# ---- metrics: fn(targets, predictions) -> {name: value} -------------------------------------

def accuracy(targets, predictions):
  return {'accuracy': 100.0 * float(np.mean(np.asarray(targets) == np.asarray(predictions)))}


def _binary_f1(targets, predictions):
  """F1 of class 1; a prediction that is neither 0 nor 1 counts as the wrong class."""
  t = np.asarray(targets) == 1
  p = np.asarray(predictions)
  p = np.where(np.isin(p, (0, 1)), p == 1, ~t)
  tp = np.sum(t & p)
  denom = 2 * tp + np.sum(~t & p) + np.sum(t & ~p)
  return 100.0 * 2 * tp / denom if denom else 0.0


def f1(targets, predictions):
  return {'f1': float(_binary_f1(targets, predictions))}


def mean_multiclass_f1(num_classes: int):
  """T5's mean_<n>class_f1: the mean F1 of classes 0..n-1 (invalid predictions hit none)."""
  def fn(targets, predictions):
    t, p = np.asarray(targets), np.asarray(predictions)
    scores = []
    for c in range(num_classes):
      tp, fp, fn_ = np.sum((t == c) & (p == c)), np.sum((t != c) & (p == c)), np.sum(
          (t == c) & (p != c))
      scores.append(100.0 * 2 * tp / (2 * tp + fp + fn_) if tp + fp + fn_ else 0.0)
    return {f'mean_{num_classes}class_f1': float(np.mean(scores))}
  return fn


def matthews_corrcoef(targets, predictions):
  """Matthews correlation over every label present (multiclass form; -1 is a class)."""
  t, p = np.asarray(targets), np.asarray(predictions)
  labels = np.union1d(t, p)
  confusion = np.array([[np.sum((t == a) & (p == b)) for b in labels] for a in labels], float)
  true_k, pred_k = confusion.sum(1), confusion.sum(0)
  correct, total = np.trace(confusion), confusion.sum()
  denom = np.sqrt((total ** 2 - pred_k @ pred_k) * (total ** 2 - true_k @ true_k))
  return {'matthews_corrcoef': 100.0 * float((correct * total - pred_k @ true_k) / denom)
          if denom else 0.0}


def pearson_spearman(targets, predictions):
  """T5's pearson_corrcoef and spearman_corrcoef (invalid outputs were mapped to -1)."""
  t, p = np.asarray(targets, float), np.asarray(predictions, float)
  if np.ptp(t) == 0 or np.ptp(p) == 0:  # undefined for constant input: no correlation
    return {'pearson_corrcoef': 0.0, 'spearman_corrcoef': 0.0}
  return {'pearson_corrcoef': 100.0 * float(scipy.stats.pearsonr(t, p)[0]),
          'spearman_corrcoef': 100.0 * float(scipy.stats.spearmanr(t, p)[0])}


def multirc_f1_em(targets, predictions):
  """T5's MultiRC metrics: 'f1' over all answers (F1a) and 'exact_match' of all of a
  question's answers."""
  t = np.asarray([x['value'] for x in targets])
  p = np.asarray([x['value'] for x in predictions])
  groups = collections.defaultdict(list)
  for target, ok in zip(targets, t == p):
    groups[target['group']].append(ok)
  return {'f1': float(_binary_f1(t, p)),
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
  """T5's ReCoRD metrics ('f1', 'em' of SQuAD): max over a query's answers, one prediction
  per query (examples were split per answer)."""
  seen, f1s, ems = set(), [], []
  for target, prediction in zip(targets, predictions):
    if target['group'] in seen:
      continue
    seen.add(target['group'])
    answers = target['answers'] or ['']
    f1s.append(max(_token_f1(prediction, a) for a in answers))
    ems.append(max(float(_squad_normalize(prediction) == _squad_normalize(a)) for a in answers))
  return {'f1': 100.0 * float(np.mean(f1s)), 'em': 100.0 * float(np.mean(ems))}


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
