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
import jax
import seqio
from tensorflow.io import gfile

from hyperprompt_jax import checkpoints, evaluation, files, gin_utils, models, runtime
from hyperprompt_jax.config import HyperPromptConfig
from hyperprompt_tasks import task_table

log = logging.getLogger('hyperprompt_jax')


@gin.configurable
def infer(*, model_dir: str = gin.REQUIRED, input_file: str = gin.REQUIRED,
          task_feature_lengths: Dict[str, int] = gin.REQUIRED,
          config: HyperPromptConfig = gin.REQUIRED, vocabulary: seqio.Vocabulary = gin.REQUIRED,
          output_file: Optional[str] = None, step: Optional[int] = None,
          batch_size: int = 32, num_partitions: int = 1, parameter_partitioning_dims: int = 1,
          activation_partitioning_dims: int = 1) -> str:
  """Predictions for every line of `input_file`, written by process 0 to one file. The
  model is laid out as in training (runtime.build); batches are decoded split over 'data'."""
  model_dir, input_file = files.expand(model_dir), files.expand(input_file)
  rows, task_ids = read_inputs(input_file)
  models.check_num_tasks(config, task_ids, input_file, trained=True)
  checkpoints.check_task_ids(model_dir, {_seqio_name(r['task']): tid
                                         for r, tid in zip(rows, task_ids)})
  run = runtime.build(config, num_partitions, parameter_partitioning_dims,
                      activation_partitioning_dims)
  model = run.model
  params, step = run.restore_params(model_dir, step)
  tokens = [list(vocabulary.encode(r['inputs']))[:task_feature_lengths['inputs'] - 1] + [1]
            for r in rows]
  outputs = evaluation.predict_tokens(model, params, tokens, task_ids, batch_size,
                                      task_feature_lengths['targets'],
                                      task_feature_lengths['inputs'],
                                      partitioner=run.partitioner) if rows else []
  output_file = files.expand(output_file or os.path.join(model_dir, 'inference.jsonl'))
  if jax.process_index() == 0:  # every process holds every prediction; one writes them
    files.write_text_atomic(output_file, ''.join(
        json.dumps(dict(row, prediction=vocabulary.decode(out), step=step)) + '\n'
        for row, out in zip(rows, outputs)))  # an empty input: an empty file
  log.info('Wrote %d predictions to %s', len(rows), output_file)
  return output_file


def read_inputs(input_file: str):
  """(rows, task ids) of a JSON-lines input; each bad line is an error naming the file and
  the line. An input without lines gives no rows (and an empty output)."""
  rows, task_ids = [], []
  with gfile.GFile(input_file) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{input_file} line {number}'
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where} is not JSON ({e.msg}): write one object per line, e.g. '
                         '{"task": "glue/rte", "inputs": "rte sentence1: ..."}.') from None
      if not isinstance(row, dict) or not isinstance(row.get('task'), str) or not isinstance(
          row.get('inputs'), str):
        raise ValueError(f'{where} needs an object with "task" and "inputs" strings, got '
                         f'{line.strip()[:80]}.')
      try:
        task_ids.append(task_table.task_id(row['task']))
      except ValueError as e:
        raise ValueError(f'{where}: {e}') from None
      rows.append(row)
  return rows, task_ids


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
