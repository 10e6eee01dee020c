"""Standalone evaluation of a run's checkpoints:
`python -m hyperprompt_jax.eval --gin_file=... --gin_file=runs/eval.gin --gin.MODEL_DIR=...`.

Greedy decoding with the cache, each task's seqio metrics, the benchmark average; every
evaluated step is appended to MODEL_DIR/metrics.jsonl (keys eval/...) and each task's best
step is kept in MODEL_DIR/eval/best.json.
"""

import json
import logging
import os
from typing import Dict, Optional

import gin
import jax

from hyperprompt_jax import checkpoints, evaluation, files, gin_utils, trainer
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

log = logging.getLogger('hyperprompt_jax')


def restore_params(model: Transformer, model_dir: str, step: Optional[int]):
  """Params of `step` (default latest) of a run, checked against the model's shapes."""
  store = checkpoints.CheckpointStore(model_dir)
  steps = store.all_steps()
  if not steps:
    raise ValueError(f'No checkpoint in {model_dir}: train first or point MODEL_DIR at a run.')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f'Step {step} is not saved in {model_dir}; saved steps: {steps}.')
  abstract = trainer.init_variables_abstract(model)['params']
  problems = checkpoints.shape_mismatches(store.stored_params(step), abstract)
  if problems:
    raise ValueError(f'Checkpoint {step} does not fit this model ({problems[0]}): use the gin '
                     'model files the run was trained with.')
  return checkpoints.load_params(os.path.join(model_dir, 'checkpoints', str(step))), step


@gin.configurable
def evaluate_run(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
                 task_feature_lengths: Dict[str, int] = gin.REQUIRED,
                 config: HyperPromptConfig = gin.REQUIRED, step: Optional[int] = None,
                 split: str = 'validation', batch_size: int = 64,
                 max_examples: Optional[int] = None, all_steps: bool = False) -> Dict:
  """Evaluates the latest (or given, or with all_steps every) saved step."""
  model = Transformer(config)
  store = checkpoints.CheckpointStore(model_dir)
  steps = store.all_steps() if all_steps and step is None else [step]
  results = {}
  for s in steps:
    params, s = restore_params(model, model_dir, s)
    res = evaluation.evaluate(model, params, mixture_or_task_name, task_feature_lengths,
                              batch_size, split=split, max_examples=max_examples)
    record = {'step': s, **{f'eval/{t}/{m}': v for t, ms in res.items() for m, v in ms.items()}}
    if res:
      record['eval/average'] = evaluation.average_score(res)
    if jax.process_index() == 0:
      path = os.path.join(model_dir, 'metrics.jsonl')
      files.JsonlAppender(path, files.read_jsonl(path)).write(record)
      evaluation.record_best(model_dir, s, res)
    log.info('step %d: %s', s, record)
    print(json.dumps(record))
    results[s] = record
  return results


def main(argv=None):
  gin_utils.run_main(lambda: evaluate_run(), 'Evaluate a HyperPrompt run.', argv)


if __name__ == '__main__':
  main()
