"""The eval command, evaluation as its own job over a run's checkpoints:
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

from hyperprompt_jax import checkpoints, evaluation, files, gin_utils
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer

log = logging.getLogger('hyperprompt_jax')


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
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
    params, s = checkpoints.restore_params(model, model_dir, s)
    record = evaluation.evaluate_step(model, params, mixture_or_task_name, task_feature_lengths,
                                      batch_size, model_dir, s, split=split,
                                      max_examples=max_examples)
    if jax.process_index() == 0:
      path = os.path.join(model_dir, 'metrics.jsonl')
      files.JsonlAppender(path, files.read_jsonl(path)).write(record)
    log.info('step %d: %s', s, record)
    print(json.dumps(record))
    results[s] = record
  return results


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.eval', 'evaluate', 'Evaluate a HyperPrompt run.', argv)


if __name__ == '__main__':
  main()
