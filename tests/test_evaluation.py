"""Evaluation records: unique task keys, GLUE and SuperGLUE scored apart in one run, and
best.json comparing only evaluations of the same split and size."""

import json
import os

import jax
import pytest

import hyperprompt_tasks
from hyperprompt_jax import evaluation

GLUE_RTE, SG_RTE, COLA = ('hyperprompt_glue_rte', 'hyperprompt_super_glue_rte',
                          'hyperprompt_glue_cola')


def _rows(n):
  return [{'inputs': 'x', 'target': 'y', 'prediction': 'y', 'task_id': 0}] * n


def test_every_registered_task_has_a_unique_key():
  names = list(hyperprompt_tasks.TASK_IDS)
  keys = [hyperprompt_tasks.task_key(n) for n in names]
  assert len(set(keys)) == len(keys)
  assert hyperprompt_tasks.task_key(GLUE_RTE) == 'glue_rte'
  assert hyperprompt_tasks.task_key(SG_RTE) == 'super_glue_rte'
  assert hyperprompt_tasks.task_key(COLA) == 'cola'
  assert hyperprompt_tasks.task_key('hyperprompt_demo_topic') == 'topic'
  assert hyperprompt_tasks.task_key('myproject_task') == 'myproject_task'


def test_one_model_on_glue_and_super_glue_is_scored_per_benchmark(tmp_path):
  results = {GLUE_RTE: {'accuracy': 90.0}, SG_RTE: {'accuracy': 10.0},
             COLA: {'matthews_corrcoef': 50.0}}
  assert evaluation.benchmark_scores(results) == {'glue': 70.0, 'super_glue': 10.0}
  assert evaluation.average_score(results) == pytest.approx(40.0)
  table = evaluation.format_table(5, results)
  assert 'glue_rte ' in table and 'super_glue_rte ' in table
  assert 'glue score: 70.00' in table and 'super_glue score: 10.00' in table
  assert table.endswith('benchmark score: 40.00 (mean of glue, super_glue)')
  out = evaluation.EvalOutput(str(tmp_path / 'eval'))
  record, best = out.write(5, results, {t: _rows(3) for t in results})
  assert record['eval/average_glue'] == 70.0 and record['eval/average_super_glue'] == 10.0
  assert record['eval/average'] == 40.0
  assert record['split'] == 'validation' and record['examples'][SG_RTE] == 3
  for key in ('glue_rte', 'super_glue_rte', 'cola'):
    assert os.path.exists(tmp_path / 'eval' / f'{key}-5.jsonl')
    assert os.path.isdir(tmp_path / 'eval' / key)
  assert best['tasks'][GLUE_RTE]['score'] == 90.0 and best['tasks'][SG_RTE]['score'] == 10.0
  assert best['average_of_best'] == pytest.approx(40.0)
  # One benchmark: its score alone, no per-benchmark keys.
  single = evaluation.eval_record(1, {COLA: {'matthews_corrcoef': 50.0}})
  assert single['eval/average'] == 50.0 and not any(k.startswith('eval/average_')
                                                    for k in single)


def test_best_json_compares_only_the_same_split_and_number_of_examples(tmp_path):
  model_dir = tmp_path / 'run'
  trainer = evaluation.EvalOutput(str(model_dir / 'training_eval'), str(model_dir))
  trainer.write(100, {COLA: {'m': 80.0}}, {COLA: _rows(20)})   # a 20-example subset
  trainer.write(200, {COLA: {'m': 60.0}}, {COLA: _rows(1043)})
  # An older record that does not say what it evaluated is not compared either.
  with open(model_dir / 'training_eval' / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps({'step': 50, f'eval/{COLA}/m': 99.0, 'eval/average': 99.0}) + '\n')
  job = evaluation.EvalOutput(str(model_dir / 'inference_eval'), str(model_dir))
  _, best = job.write(300, {COLA: {'m': 55.0}}, {COLA: _rows(1043)})
  assert best['tasks'][COLA]['step'] == 200 and best['tasks'][COLA]['score'] == 60.0
  assert best['split'] == 'validation' and best['examples'] == {COLA: 1043}
  _, best = job.write(300, {COLA: {'m': 40.0}}, {COLA: _rows(20)}, split='test')
  assert best['tasks'][COLA] == {'step': 300, 'score': 40.0, 'metrics': {'m': 40.0}}
  with open(model_dir / 'inference_eval' / 'best.json') as f:
    assert json.load(f)['split'] == 'test'


def test_task_ids_outside_the_model_are_an_error_never_an_empty_prediction():
  import jax.numpy as jnp
  import numpy as np
  from hyperprompt_jax import models
  from hyperprompt_jax.network import Transformer
  from tests.helpers import init_params, random_tokens, tiny_config
  config = tiny_config('global')  # num_tasks 3
  model, params = Transformer(config), init_params(config)
  inputs = [list(random_tokens(0, (5,))) + [1]] * 2
  with pytest.raises(ValueError, match=r'The inputs uses task id 3 but the model has num_tasks=3'):
    evaluation.predict_tokens(model, params, inputs, [0, 3], 2, 4, 8)
  with pytest.raises(ValueError, match='hyperprompt_demo uses task id 3, 4 but the model'):
    evaluation.evaluate(model, params, 'hyperprompt_demo', {'inputs': 8, 'targets': 4}, 2)
  # Inside jit (no host check) an out-of-range id gives NaN logits: the row is flagged.
  tokens = evaluation.pad_tokens(inputs, 8)
  _, finite = models.greedy_decode(model, params, tokens, np.array([0, 3], np.int32), 4,
                                   return_finite=True)
  assert np.asarray(finite).tolist() == [True, False]
  # Diverged parameters: an error naming the cause, not empty text.
  nan_params = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  with pytest.raises(evaluation.DecodingError, match='non-finite logits for 2 of 2 rows'):
    evaluation.predict_tokens(model, nan_params, inputs, [0, 1], 2, 4, 8)
