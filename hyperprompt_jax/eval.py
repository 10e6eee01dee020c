"""The eval command, evaluation as its own job over a run's checkpoints:
`python -m hyperprompt_jax.eval --gin_file=... --gin_file=runs/eval.gin --gin.MODEL_DIR=...`.

Greedy decoding with the cache, each task's seqio metrics and the benchmark average, printed
as a table per step. Everything goes to EVAL_OUTPUT_DIR (default MODEL_DIR/inference_eval,
as in t5x): metrics.jsonl, predictions per task and step, TensorBoard and best.json. Nothing
of the training job's is written, so eval can run beside it.
"""

import json
import logging
import os
from typing import Dict, Optional

import gin
from tensorflow.io import gfile

import hyperprompt_tasks
from hyperprompt_jax import checkpoints, evaluation, files, gin_utils, models, runtime
from hyperprompt_jax.config import HyperPromptConfig

log = logging.getLogger('hyperprompt_jax')


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, mixture_or_task_name: str = gin.REQUIRED,
             task_feature_lengths: Dict[str, int] = gin.REQUIRED,
             config: HyperPromptConfig = gin.REQUIRED, step: Optional[int] = None,
             output_dir: Optional[str] = None, split: str = 'validation', batch_size: int = 64,
             max_examples: Optional[int] = None, all_steps: bool = False,
             num_partitions: int = 1, parameter_partitioning_dims: int = 1,
             activation_partitioning_dims: int = 1) -> Dict:
  """Evaluates the latest (or given, or with all_steps every) saved step. Nothing is
  written before the run's checkpoints and tasks have been checked. The model is laid out
  as in training (NUM_PARTITIONS along 'model'; runtime.build): parameters are restored
  into their shardings and each batch is decoded split over 'data', every process feeding
  its own rows."""
  model_dir = files.expand(model_dir)
  if not gfile.isdir(model_dir):
    raise checkpoints.CheckpointError(f'MODEL_DIR {model_dir} does not exist: point it at a '
                                      'run folder (one that holds checkpoint_<step>).')
  checkpoints.check_task_ids(model_dir, hyperprompt_tasks.task_id_map(mixture_or_task_name))
  models.check_num_tasks(config, hyperprompt_tasks.task_ids_of(mixture_or_task_name),
                         mixture_or_task_name, trained=True)
  store = checkpoints.CheckpointStore(model_dir, read_only=True)
  saved = store.all_steps()
  if not saved:
    raise checkpoints.CheckpointError(f'No checkpoint in {model_dir}: train first or point '
                                      'MODEL_DIR at a run.')
  if step is not None and step not in saved:
    raise checkpoints.CheckpointError(f'Step {step} is not saved in {model_dir}; saved steps: '
                                      f'{saved}.')
  steps = saved if all_steps and step is None else [step]
  run = runtime.build(config, num_partitions, parameter_partitioning_dims,
                      activation_partitioning_dims)
  model = run.model
  output = evaluation.EvalOutput(files.expand(output_dir or os.path.join(model_dir,
                                                                         'inference_eval')),
                                 model_dir)
  records = {}
  for s in steps:
    params, s = run.restore_params(model_dir, s)
    results, predictions = evaluation.evaluate(model, params, mixture_or_task_name,
                                               task_feature_lengths, batch_size, split=split,
                                               max_examples=max_examples,
                                               partitioner=run.partitioner)
    record, _ = output.write(s, results, predictions, split)
    log.info('%s', evaluation.format_table(s, results))
    print(json.dumps(record))
    records[s] = record
  return records


def main(argv=None):
  gin_utils.run_command('hyperprompt_jax.eval', 'evaluate', 'Evaluate a HyperPrompt run.', argv)


if __name__ == '__main__':
  main()
