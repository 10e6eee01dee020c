"""Evaluation, shared by the trainer's periodic evaluation and the eval command: greedy
decoding per task, seqio postprocessors and metrics, the benchmark average, the evaluation
record (`eval/<task>/<metric>`, `eval/average`), the console table, and each job's own
output directory (`EvalOutput`: MODEL_DIR/training_eval for the trainer, EVAL_OUTPUT_DIR,
default MODEL_DIR/inference_eval, for the eval command) with T5's convention of reporting
each task's best checkpoint (best.json)."""

import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from clu import metric_writers
from jax.experimental import multihost_utils
from tensorflow.io import gfile

import hyperprompt_tasks
from hyperprompt_jax import files, input_pipeline, models
from hyperprompt_tasks import metrics as task_metrics

log = logging.getLogger('hyperprompt_jax')


def pad_tokens(rows, length):
  """Token lists -> int32 [len(rows), length], zero-padded (cut at length)."""
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :min(len(r), length)] = r[:length]
  return out


class DecodingError(ValueError):
  """Decoding gave no prediction (non-finite logits); the message names the likely cause."""


class Interrupted(Exception):
  """`should_stop` said so between two decoded batches (a preemption during evaluation)."""


def _decode(model, params, tokens, ids, max_length, partitioner):
  """(tokens, finite) of one fixed-shape batch, as numpy. With a partitioner the batch is
  split over its 'data' axis (each process puts only its own rows on its devices) and the
  predictions are gathered back on every process."""
  if partitioner is None:
    out, finite = models.greedy_decode(model, params, tokens, ids, max_length=max_length,
                                       return_finite=True)
    return np.asarray(out), np.asarray(finite)
  place = lambda x: jax.make_array_from_callback(
      x.shape, partitioner.batch_sharding(x.ndim), lambda index: x[index])
  with partitioner.context():
    out, finite = models.greedy_decode(model, params, place(tokens), place(ids),
                                       max_length=max_length, return_finite=True)
  gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return gather(out), gather(finite)


def predict_tokens(model, params, inputs, task_ids, batch_size, max_length, input_length,
                   should_stop: Optional[Callable[[], bool]] = None, partitioner=None):
  """Decoded token lists for lists of input token ids and task ids. Task ids are checked
  against the model's num_tasks first; a row whose logits were not finite is an error,
  never an empty prediction. `should_stop` is asked before every batch (Interrupted).
  `partitioner`: decode with the batch split over its 'data' axis (the batch is padded to a
  multiple of the data-parallel size)."""
  models.check_num_tasks(model.config, task_ids, 'The inputs', trained=True)
  if partitioner is not None:
    data = partitioner.mesh.shape['data']
    batch_size = -(-batch_size // data) * data
  predictions = []
  for start in range(0, len(inputs), batch_size):
    if should_stop is not None and should_stop():
      raise Interrupted()
    chunk = inputs[start:start + batch_size]
    ids = list(task_ids[start:start + batch_size])
    pad = batch_size - len(chunk)  # fixed shapes: one compilation
    tokens = pad_tokens(list(chunk) + [[0]] * pad, input_length)
    ids = np.asarray(ids + [0] * pad, np.int32)
    out, finite = _decode(model, params, tokens, ids, max_length, partitioner)
    finite = finite[:len(chunk)]
    if not finite.all():
      bad = int(np.argmin(finite))
      raise DecodingError(
          f'Decoding gave non-finite logits for {int((~finite).sum())} of {len(chunk)} rows '
          f'(first: example {start + bad}, task id {ids[bad]}): the checkpoint has diverged '
          '(NaN/Inf parameters); evaluate an earlier checkpoint (--gin.eval.evaluate.step=N).')
    for row in out[:len(chunk)]:
      row = list(row)
      predictions.append(row[:row.index(1)] if 1 in row else row)
  return predictions


def evaluate(model, params, mixture_or_task_name: str, task_feature_lengths: Dict[str, int],
             batch_size: int, split: str = 'validation', max_examples: Optional[int] = None,
             should_stop: Optional[Callable[[], bool]] = None, partitioner=None
             ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, List[Dict]]]:
  """Every task of the mixture that has `split`: ({task: {metric: value}}, {task: rows of
  inputs, target, prediction, task_id}). Raises Interrupted when `should_stop()` turns true
  between two batches."""
  models.check_num_tasks(model.config, hyperprompt_tasks.task_ids_of(mixture_or_task_name),
                         mixture_or_task_name, trained=True)
  results, predictions = {}, {}
  for task in hyperprompt_tasks.tasks_of(mixture_or_task_name):
    if split not in task.splits or not task.metric_fns:
      continue
    examples = input_pipeline.eval_examples(task, task_feature_lengths, split, max_examples)
    if not examples:
      continue
    vocab = task.output_features['targets'].vocabulary
    tokens = predict_tokens(model, params, [e['inputs'] for e in examples],
                            [int(e['task_ids'][0]) for e in examples], batch_size,
                            task_feature_lengths['targets'], task_feature_lengths['inputs'],
                            should_stop, partitioner)
    post = task.postprocess_fn or (lambda x, **_: x)
    texts = [vocab.decode(t) for t in tokens]
    preds = [post(t, example=e, is_target=False) for t, e in zip(texts, examples)]
    targets = [post(e['targets_pretokenized'].decode('utf-8'), example=e, is_target=True)
               for e in examples]
    scores = {}
    for fn in task.metric_fns:
      scores.update(fn(targets, preds))
    results[task.name] = scores
    predictions[task.name] = [
        {'inputs': _text(e.get('inputs_pretokenized', b'')), 'target': _text(
            e['targets_pretokenized']), 'prediction': text, 'task_id': int(e['task_ids'][0])}
        for e, text in zip(examples, texts)]
  return results, predictions


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def benchmark_scores(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
  """{benchmark: score} of the evaluated tasks, as T5 reports GLUE and SuperGLUE apart: the
  tasks grouped by benchmark (another project's tasks form 'other'), each group's score the
  mean of its tasks' scores (MNLI's matched and mismatched averaged into one)."""
  groups: Dict[str, Dict[str, Dict[str, float]]] = {}
  for name, scores in results.items():
    benchmark = hyperprompt_tasks.benchmark_of(name) or 'other'
    groups.setdefault(benchmark, {})[hyperprompt_tasks.short_name(name)] = scores
  return {b: task_metrics.benchmark_score(per_task, [t for t in per_task if t != 'mnli_mismatched'])
          for b, per_task in sorted(groups.items())}


def average_score(results: Dict[str, Dict[str, float]]) -> float:
  """The run's score (`eval/average`, what the kept best checkpoint is chosen by): its
  benchmark's score; with several (one model on GLUE and SuperGLUE), their mean."""
  return float(np.mean(list(benchmark_scores(results).values())))


def eval_record(step: int, results: Dict[str, Dict[str, float]], split: str = 'validation',
                examples: Optional[Dict[str, int]] = None) -> Dict:
  """The metrics.jsonl record of one evaluation (no 'loss' key): `eval/<task>/<metric>`,
  `eval/average`, with several benchmarks also `eval/average_<benchmark>`, and what was
  evaluated: the split and each task's number of examples."""
  record = {'step': step, 'split': split, 'examples': dict(examples or {})}
  for task, scores in results.items():
    for metric, value in scores.items():
      record[f'eval/{task}/{metric}'] = float(value)
  if results:
    record['eval/average'] = average_score(results)
    scores = benchmark_scores(results)
    if len(scores) > 1:
      record.update({f'eval/average_{b}': v for b, v in scores.items()})
  return record


def results_of_record(record: Dict) -> Dict[str, Dict[str, float]]:
  """eval_record's inverse: {task: {metric: value}}."""
  results: Dict[str, Dict[str, float]] = {}
  for key, value in record.items():
    if key.startswith('eval/') and key.count('/') >= 2:
      _, task, metric = key.split('/', 2)
      results.setdefault(task, {})[metric] = value
  return results


def best_of(records: Sequence[Dict], split: Optional[str] = None,
            examples: Optional[Dict[str, int]] = None) -> Dict:
  """Each task's best step and metrics over evaluation records, and the average of those
  bests (Raffel et al.'s convention); the earliest step wins a tie. With `split`, only like
  is compared with like: a task's record counts when it evaluated that split on the same
  number of examples (`examples[task]`); records that do not say are left out."""
  best: Dict = {'tasks': {}}
  if split is not None:
    best.update(split=split, examples=dict(examples or {}))
  for record in sorted(records, key=lambda r: r['step']):
    for task, scores in results_of_record(record).items():
      if split is not None and (record.get('split') != split or
                                record.get('examples', {}).get(task) != (examples or {}).get(task)):
        continue
      score = task_metrics.task_score(scores)
      if task not in best['tasks'] or score > best['tasks'][task]['score']:
        best['tasks'][task] = {'step': record['step'], 'score': score, 'metrics': scores}
  if best['tasks']:
    best['average_of_best'] = average_score({t: v['metrics'] for t, v in best['tasks'].items()})
  return best


def format_table(step: int, results: Dict[str, Dict[str, float]]) -> str:
  """The console's per-task table of one evaluation, with the benchmark score(s)."""
  rows = [(hyperprompt_tasks.task_key(t), ', '.join(f'{m} {v:.2f}' for m, v in
                                                     sorted(s.items())),
           f'{task_metrics.task_score(s):.2f}') for t, s in sorted(results.items())]
  head = ('task', 'metrics', 'score')
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
  line = lambda r: '  '.join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  body = '\n'.join(line(r) for r in rows)
  scores = benchmark_scores(results)
  footer = ''.join(f'{b} score: {v:.2f}\n' for b, v in scores.items()) if len(scores) > 1 else ''
  mean = f' (mean of {", ".join(scores)})' if len(scores) > 1 else ''
  return (f'evaluation at step {step}:\n{line(head)}\n{body}\n{footer}'
          f'benchmark score: {average_score(results):.2f}{mean}')


EVAL_DIRS = ('training_eval', 'inference_eval')  # t5x's names: the trainer's, the eval job's


class EvalOutput:
  """One evaluation job's outputs in its own directory (nothing another job writes):
    metrics.jsonl             one record per evaluated step (appended, never rewritten)
    <task>-<step>.jsonl       predictions: inputs, target, prediction, task_id
    <task>/, average/         TensorBoard scalars (eval/<metric>, eval/average)
    best.json                 each task's best step over every evaluation of the run (this
                              directory and MODEL_DIR/{training_eval,inference_eval}) of the
                              same split and number of examples as this one
  (<task>: hyperprompt_tasks.task_key, e.g. 'cola', 'glue_rte', 'super_glue_rte').
  Written by process 0 only."""

  def __init__(self, output_dir: str, model_dir: Optional[str] = None):
    self.output_dir = output_dir
    self.sources = [os.path.join(output_dir, 'metrics.jsonl')]
    if model_dir:
      self.sources += [os.path.join(model_dir, d, 'metrics.jsonl') for d in EVAL_DIRS
                       if os.path.join(model_dir, d).rstrip('/') != output_dir.rstrip('/')]
    self.active = jax.process_index() == 0
    self._writers = {}
    if self.active:
      gfile.makedirs(output_dir)

  def _writer(self, name: str):
    if name not in self._writers:
      self._writers[name] = metric_writers.create_default_writer(
          os.path.join(self.output_dir, name), asynchronous=False)
    return self._writers[name]

  def write(self, step: int, results, predictions, split: str = 'validation'
            ) -> Tuple[Dict, Dict]:
    """Writes one evaluation of `split`; returns its record and best.json's contents (empty
    off process 0)."""
    examples = {task: len(rows) for task, rows in predictions.items()}
    record = eval_record(step, results, split, examples)
    if not self.active:
      return record, {}
    files.append_jsonl(self.sources[0], record)
    for task, rows in predictions.items():
      name = hyperprompt_tasks.task_key(task)
      files.write_text_atomic(os.path.join(self.output_dir, f'{name}-{step}.jsonl'),
                              ''.join(json.dumps(r) + '\n' for r in rows))
    for task, scores in results.items():
      writer = self._writer(hyperprompt_tasks.task_key(task))
      writer.write_scalars(step, {f'eval/{m}': float(v) for m, v in scores.items()})
      writer.flush()
    if results:
      self._writer('average').write_scalars(step, {'eval/average': record['eval/average']})
      self._writer('average').flush()
    best = best_of([r for path in self.sources for r in files.read_jsonl(path)], split,
                   examples)
    files.write_text_atomic(os.path.join(self.output_dir, 'best.json'),
                            json.dumps(best, indent=1, sort_keys=True))
    return record, best
