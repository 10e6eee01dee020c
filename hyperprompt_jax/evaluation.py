"""Evaluation, shared by the trainer's periodic evaluation and the eval command: greedy
decoding per task, seqio postprocessors and metrics, the benchmark average, the evaluation
record both write (`eval/<task>/<metric>`, `eval/average`) and T5's convention of reporting
each task's best checkpoint (MODEL_DIR/eval/best.json)."""

import json
import logging
import os
from typing import Dict, Optional

import jax
import numpy as np
from tensorflow.io import gfile

import hyperprompt_tasks
from hyperprompt_jax import files, input_pipeline
from hyperprompt_jax.models import greedy_decode
from hyperprompt_tasks import metrics as task_metrics

log = logging.getLogger('hyperprompt_jax')


def pad_tokens(rows, length):
  """Token lists -> int32 [len(rows), length], zero-padded (cut at length)."""
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :min(len(r), length)] = r[:length]
  return out


def predict_tokens(model, params, inputs, task_ids, batch_size, max_length, input_length):
  """Decoded token lists for lists of input token ids and task ids."""
  predictions = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    ids = list(task_ids[start:start + batch_size])
    pad = batch_size - len(chunk)  # fixed shapes: one compilation
    tokens = pad_tokens(list(chunk) + [[0]] * pad, input_length)
    ids = np.asarray(ids + [0] * pad, np.int32)
    out = np.asarray(greedy_decode(model, params, tokens, ids, max_length=max_length))
    for row in out[:len(chunk)]:
      row = list(row)
      predictions.append(row[:row.index(1)] if 1 in row else row)
  return predictions


def evaluate(model, params, mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
             batch_size: int, split: str = 'validation',
             max_examples: Optional[int] = None) -> Dict[str, Dict[str, float]]:
  """Metrics of every task of the mixture that has `split`: {task name: {metric: value}}."""
  results = {}
  for task in hyperprompt_tasks.tasks_of(mixture_or_task_name):
    if split not in task.splits or not task.metric_fns:
      continue
    examples = input_pipeline.eval_examples(task, task_feature_lengths, split, max_examples)
    if not examples:
      continue
    vocab = task.output_features['targets'].vocabulary
    tokens = predict_tokens(model, params, [e['inputs'] for e in examples],
                            [int(e['task_ids'][0]) for e in examples], batch_size,
                            task_feature_lengths['targets'], task_feature_lengths['inputs'])
    post = task.postprocess_fn or (lambda x, **_: x)
    preds = [post(vocab.decode(t), example=e, is_target=False) for t, e in zip(tokens, examples)]
    targets = [post(e['targets_pretokenized'].decode('utf-8'), example=e, is_target=True)
               for e in examples]
    scores = {}
    for fn in task.metric_fns:
      scores.update(fn(targets, preds))
    results[task.name] = scores
  return results


def average_score(results: Dict[str, Dict[str, float]]) -> float:
  """The benchmark average (GLUE / SuperGLUE / demo score) of the evaluated tasks."""
  per_task = {hyperprompt_tasks.short_name(k): v for k, v in results.items()}
  tasks = [t for t in per_task if t != 'mnli_mismatched']
  return task_metrics.benchmark_score(per_task, tasks)


def record_best(model_dir: str, step: int, results: Dict[str, Dict[str, float]]) -> Dict:
  """Updates MODEL_DIR/eval/best.json: each task's best step and metrics so far, and the
  average of those bests (Raffel et al.'s convention)."""
  path = os.path.join(model_dir, 'eval', 'best.json')
  gfile.makedirs(os.path.dirname(path))
  best = {'tasks': {}}
  if gfile.exists(path):
    with gfile.GFile(path) as f:
      best = json.load(f)
  for task, scores in results.items():
    score = task_metrics.task_score(scores)
    if task not in best['tasks'] or score > best['tasks'][task]['score']:
      best['tasks'][task] = {'step': step, 'score': score, 'metrics': scores}
  best['average_of_best'] = average_score({t: v['metrics'] for t, v in best['tasks'].items()})
  files.write_text_atomic(path, json.dumps(best, indent=1, sort_keys=True))
  log.info('Best per task so far: %s', {t: v['step'] for t, v in best['tasks'].items()})
  return best


def eval_record(step: int, results: Dict[str, Dict[str, float]]) -> Dict:
  """The metrics.jsonl / TensorBoard record of one evaluation (no 'loss' key)."""
  record = {'step': step}
  for task, scores in results.items():
    for metric, value in scores.items():
      record[f'eval/{task}/{metric}'] = float(value)
  if results:
    record['eval/average'] = average_score(results)
  return record


def evaluate_step(model, params, mixture_or_task_name: str,
                  task_feature_lengths: Dict[str, int], batch_size: int, model_dir: str,
                  step: int, split: str = 'validation',
                  max_examples: Optional[int] = None) -> Dict:
  """Evaluates one step's params, updates best.json (process 0) and returns the record."""
  results = evaluate(model, params, mixture_or_task_name, task_feature_lengths, batch_size,
                     split=split, max_examples=max_examples)
  if jax.process_index() == 0:
    record_best(model_dir, step, results)
  return eval_record(step, results)
