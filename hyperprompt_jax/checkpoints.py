"""Checkpoints: orbax, written atomically, with the input position saved beside each step.

Layout under MODEL_DIR:
  checkpoints/<step>/      orbax (train state: step, params, optimizer state)
  input_state/step_<step>/ tf.data iterator position per host (written before the step's
                           orbax save finalises, so every finished checkpoint has one)
"""

import logging
import os
from typing import Any, Dict, List, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from tensorflow.io import gfile

from hyperprompt_jax import files, input_pipeline

log = logging.getLogger('hyperprompt_jax')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used with this model (message names the fix)."""


def _flat(tree) -> Dict[str, Any]:
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def shape_mismatches(stored, expected) -> List[str]:
  """Human-readable differences between two trees of arrays / shape structs."""
  a, b = _flat(stored), _flat(expected)
  out = [f'{k}: checkpoint {tuple(a[k].shape)} vs model {tuple(b[k].shape)}'
         for k in sorted(set(a) & set(b)) if tuple(a[k].shape) != tuple(b[k].shape)]
  out += [f'{k}: only in checkpoint' for k in sorted(set(a) - set(b))]
  out += [f'{k}: only in model' for k in sorted(set(b) - set(a))]
  return out


class CheckpointStore:
  """Saves and restores the train state of one run (MODEL_DIR)."""

  def __init__(self, model_dir: str, keep: int = 3):
    self.model_dir = model_dir
    self.input_dir = os.path.join(model_dir, 'input_state')
    self.manager = ocp.CheckpointManager(
        os.path.join(files.absolute(model_dir), 'checkpoints'),
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def stored_params(self, step: int):
    """Metadata (shapes, dtypes) of a saved step's params, without reading arrays."""
    stored = self.manager.item_metadata(step)
    return getattr(stored, 'tree', stored)['params']

  def save(self, step: int, state, iterator=None) -> None:
    if iterator is not None:
      iterator.save(self.input_dir, step)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      input_pipeline.prune_input_states(self.input_dir, set(self.manager.all_steps()))

  def restore(self, step: int, abstract_state, iterator=None):
    problems = shape_mismatches(self.stored_params(step), abstract_state['params'])
    if problems:
      raise CheckpointError(
          f'Checkpoint {step} in {self.model_dir} does not fit this model ({len(problems)} '
          f'differences, e.g. {problems[0]}): use a new MODEL_DIR or the gin config it was '
          'trained with.')
    state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    if iterator is not None and not iterator.restore(self.input_dir, step):
      log.warning('No saved input position for step %d: the input restarts.', step)
    return state


def load_params(path: str) -> Dict[str, Any]:
  """The 'params' tree (numpy) of a checkpoint: a T5X checkpoint_<step> directory (orbax or
  the legacy format of the public T5.1.1 checkpoints), or one of ours (a step directory, a
  checkpoints/ directory or a MODEL_DIR, whose latest step is taken)."""
  from hyperprompt_jax import t5x_checkpoints  # pylint: disable=import-outside-toplevel
  if t5x_checkpoints.is_t5x_checkpoint(path):
    return t5x_checkpoints.load_t5x_params(path)
  path = files.absolute(path).rstrip('/')
  for candidate in (os.path.join(path, 'checkpoints'), path):
    names = [n.rstrip('/') for n in gfile.listdir(candidate)] if gfile.isdir(candidate) else []
    steps = sorted(int(n) for n in names if n.isdigit())
    if steps:
      path = os.path.join(candidate, str(steps[-1]))
      break
  if not gfile.isdir(path):
    raise CheckpointError(f'INITIAL_CHECKPOINT_PATH {path} is not a checkpoint directory.')
  for item in ('default', ''):
    directory = os.path.join(path, item) if item else path
    if gfile.isdir(directory) and gfile.exists(os.path.join(directory, '_METADATA')):
      restored = ocp.StandardCheckpointer().restore(directory)
      return jax.tree.map(np.asarray, restored['params'])
  raise CheckpointError(f'No orbax checkpoint found at {path}: point INITIAL_CHECKPOINT_PATH '
                        'at a step directory (MODEL_DIR/checkpoints/<step>).')


def merge_params(initial, loaded) -> Tuple[Any, Dict[str, List[str]]]:
  """Partial restore: loaded values where names and shapes agree, initial values elsewhere.

  Returns the merged tree and a report: 'loaded', 'initialised' (new in this model),
  'unused' (only in the checkpoint). A shape disagreement is an error.
  """
  init_flat, load_flat = _flat(initial), _flat(loaded)
  wrong = [f'{k}: checkpoint {np.shape(load_flat[k])} vs model {tuple(init_flat[k].shape)}'
           for k in init_flat if k in load_flat and
           tuple(np.shape(load_flat[k])) != tuple(init_flat[k].shape)]
  if wrong:
    raise CheckpointError(f'INITIAL_CHECKPOINT_PATH has parameters of other shapes '
                          f'({len(wrong)}, e.g. {wrong[0]}): use a checkpoint of this model size.')
  merged = {k: (load_flat[k] if k in load_flat else v) for k, v in init_flat.items()}
  report = {'loaded': sorted(k for k in init_flat if k in load_flat),
            'initialised': sorted(k for k in init_flat if k not in load_flat),
            'unused': sorted(k for k in load_flat if k not in init_flat)}
  tree = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in merged.items()})
  return tree, report
