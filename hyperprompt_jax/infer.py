"""The infer command, predictions for given inputs and task names, to a file:
`python -m hyperprompt_jax.infer --gin_file=... --gin_file=runs/infer.gin --gin.MODEL_DIR=...
 --gin.INFER_INPUT=inputs.jsonl`.

Input: JSON lines {"task": "glue/rte" | "hyperprompt_glue_rte", "inputs": "rte sentence1: ..."}
(the text as the task formats it). Output: the same objects with "prediction" added.
"""

import json
import logging
import os
from typing import Dict, Optional

import gin
import seqio
from tensorflow.io import gfile

from hyperprompt_jax import checkpoints, evaluation, gin_utils, models
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_jax.network import Transformer
from hyperprompt_tasks import task_table

log = logging.getLogger('hyperprompt_jax')


@gin.configurable
def infer(*, model_dir: str = gin.REQUIRED, input_file: str = gin.REQUIRED,
          task_feature_lengths: Dict[str, int] = gin.REQUIRED,
          config: HyperPromptConfig = gin.REQUIRED, vocabulary: seqio.Vocabulary = gin.REQUIRED,
          output_file: Optional[str] = None, step: Optional[int] = None,
          batch_size: int = 32) -> str:
  with gfile.GFile(input_file) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for i, row in enumerate(rows):
    if 'task' not in row or 'inputs' not in row:
      raise ValueError(f'{input_file} line {i + 1} needs "task" and "inputs" keys.')
  task_ids = [task_table.task_id(r['task']) for r in rows]
  models.check_num_tasks(config, task_ids, input_file, trained=True)
  checkpoints.check_task_ids(model_dir, {_seqio_name(r['task']): tid
                                         for r, tid in zip(rows, task_ids)})
  model = Transformer(config)
  params, step = checkpoints.restore_params(model, model_dir, step)
  tokens = [list(vocabulary.encode(r['inputs']))[:task_feature_lengths['inputs'] - 1] + [1]
            for r in rows]
  outputs = evaluation.predict_tokens(model, params, tokens, task_ids, batch_size,
                                      task_feature_lengths['targets'],
                                      task_feature_lengths['inputs'])
  output_file = output_file or os.path.join(model_dir, 'inference.jsonl')
  with gfile.GFile(output_file, 'w') as f:
    for row, out in zip(rows, outputs):
      f.write(json.dumps(dict(row, prediction=vocabulary.decode(out), step=step)) + '\n')
  log.info('Wrote %d predictions to %s', len(rows), output_file)
  return output_file


def _seqio_name(task: str) -> str:
  """'glue/rte' -> 'hyperprompt_glue_rte'; a seqio name is returned as it is."""
  if '/' in task:
    benchmark, short = task.split('/', 1)
    return task_table.task_name(benchmark, short)
  return task


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.infer', 'infer', 'Predict with a HyperPrompt run.', argv,
                        show=print)


if __name__ == '__main__':
  main()
