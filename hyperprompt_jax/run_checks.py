"""What the trainer checks before it builds anything or resumes: the loop's numbers, and that
a rerun builds the model its MODEL_DIR was started with (MODEL_DIR/model_config.json)."""

import dataclasses
import json
import logging
import os
from typing import Dict

from tensorflow.io import gfile

from hyperprompt_jax.config import HyperPromptConfig

log = logging.getLogger('hyperprompt_jax')


class TrainingError(RuntimeError):
  """A run that cannot go on; the message names the fix."""


# HyperPromptConfig fields that a run may change when it resumes: they change how the model
# is computed or regularised, not which model it is.
RESUMABLE_CHANGES = ('dtype', 'remat', 'embedding_lookup', 'dropout_rate', 'input_prompt_init')
MODEL_CONFIG_FILE = 'model_config.json'


def config_record(config: HyperPromptConfig) -> Dict:
  """The config's fields as JSON values (tuples as lists, dtypes as their names)."""
  plain = lambda v: (list(v) if isinstance(v, tuple) else
                     v if v is None or isinstance(v, (int, float, str)) else str(v))
  return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def check_model_config(model_dir: str, config: HyperPromptConfig, allow_change: bool) -> None:
  """A rerun in a MODEL_DIR must build the model the run was started with
  (MODEL_DIR/model_config.json): a differing field is an error naming it (or, with
  allow_change, a warning). Fields of RESUMABLE_CHANGES may differ."""
  path = os.path.join(model_dir, MODEL_CONFIG_FILE)
  if not gfile.exists(path):
    return
  with gfile.GFile(path) as f:
    stored = json.load(f)
  now = config_record(config)
  changed = [k for k in sorted(set(stored) | set(now))
             if k not in RESUMABLE_CHANGES and stored.get(k) != now.get(k) and k in stored]
  if not changed:
    return
  what = ', '.join(f'{k}={stored.get(k)!r} (now {now.get(k)!r})' for k in changed[:4])
  message = (f'{model_dir} was started with another model: {what}. Resume with the run\'s '
             f'configuration (its config.gin) or use a new MODEL_DIR')
  if not allow_change:
    raise TrainingError(message + ' (train.train.allow_config_change=True resumes anyway).')
  log.warning('%s; resuming anyway (train.train.allow_config_change).', message)


def check_train_args(**values) -> None:
  """The loop's numbers, checked before anything is built: one line naming the value."""
  minimum = {'train_steps': 0, 'batch_size': 1, 'save_every_steps': 1, 'keep_checkpoints': 1,
             'log_every_steps': 1, 'eval_every_steps': 0, 'eval_batch_size': 1,
             'num_microbatches': 1, 'max_segments': 1}
  macros = {'train_steps': 'TRAIN_STEPS', 'batch_size': 'BATCH_SIZE',
            'eval_every_steps': 'EVAL_EVERY_STEPS'}
  for name, low in minimum.items():
    value = values[name]
    label = macros.get(name, f'train.train.{name}')
    if not isinstance(value, int) or isinstance(value, bool):
      raise TrainingError(f'{label}={value!r}: must be a whole number (>= {low}).')
    if value < low:
      extra = (' (TRAIN_STEPS is the absolute step to stop at)' if name == 'train_steps' else
               ' (keep_checkpoints=0 would delete every checkpoint)'
               if name == 'keep_checkpoints' else '')
      raise TrainingError(f'{label}={value}: must be >= {low}{extra}.')
