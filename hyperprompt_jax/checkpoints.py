"""Checkpoint I/O in one place: our runs' checkpoints (orbax, written atomically, with the
input position beside each step), restoring a run's parameters, and reading any checkpoint
as INITIAL_CHECKPOINT_PATH (ours or T5X's, via `t5x_format`). `hf_convert` builds on it.

Layout under MODEL_DIR:
  checkpoints/<step>/      orbax (train state: step, params, optimizer state)
  input_state/step_<step>/ tf.data iterator position per host (written before the step's
                           orbax save finalises, so every finished checkpoint has one)

    python -m hyperprompt_jax.checkpoints to-t5x --checkpoint MODEL_DIR --output DIR
writes the run's parameters as DIR/checkpoint_<step> in t5x's layout.
"""

import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from tensorflow.io import gfile

from hyperprompt_jax import files, input_pipeline, models, t5x_format
from hyperprompt_jax.network import Transformer

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

  def check_fits(self, step: int, abstract_params) -> None:
    problems = shape_mismatches(self.stored_params(step), abstract_params)
    if problems:
      raise CheckpointError(
          f'Checkpoint {step} in {self.model_dir} does not fit this model ({len(problems)} '
          f'differences, e.g. {problems[0]}): use a new MODEL_DIR or the gin config it was '
          'trained with.')

  def restore(self, step: int, abstract_state, iterator=None):
    """The whole train state, each array read straight into the sharding its abstract
    leaf carries (every host reads only the slices its devices hold)."""
    self.check_fits(step, abstract_state['params'])
    state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    if iterator is not None and not iterator.restore(self.input_dir, step):
      log.warning('No saved input position for step %d: the input restarts.', step)
    return state

  def restore_params(self, step: int, abstract_params):
    """Only the parameters of a step (no optimizer state is read), into the shardings of
    `abstract_params` (ShapeDtypeStructs; without a sharding: this process's first device)."""
    self.check_fits(step, abstract_params)
    directory = os.path.join(files.absolute(self.model_dir), 'checkpoints', str(step), 'default')
    item = {'params': abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
    return restored['params']


def restore_params(model: Transformer, model_dir: str, step: Optional[int] = None,
                   shardings=None):
  """(params, step) of `step` (default: the latest) of a run, checked against the model."""
  store = CheckpointStore(model_dir)
  steps = store.all_steps()
  if not steps:
    raise CheckpointError(f'No checkpoint in {model_dir}: train first or point MODEL_DIR at '
                          'a run.')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(f'Step {step} is not saved in {model_dir}; saved steps: {steps}.')
  abstract = models.init_variables_abstract(model)['params']
  if shardings is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
  return store.restore_params(step, abstract), step


def load_params(path: str) -> Dict[str, Any]:
  """The 'params' tree (numpy) of a checkpoint: a T5X checkpoint_<step> directory (orbax or
  the legacy format of the public T5.1.1 checkpoints), or one of ours (a step directory, a
  checkpoints/ directory or a MODEL_DIR, whose latest step is taken)."""
  if t5x_format.is_t5x_checkpoint(path):
    return t5x_format.load_t5x_params(path)
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


def main(argv=None):
  parser = argparse.ArgumentParser(description='Checkpoint conversions.')
  commands = parser.add_subparsers(dest='command', required=True)
  export = commands.add_parser('to-t5x', help="write a run's parameters in t5x's layout")
  export.add_argument('--checkpoint', required=True, help='MODEL_DIR or a step directory')
  export.add_argument('--output', required=True, help='folder for checkpoint_<step>')
  export.add_argument('--step', type=int, default=None,
                      help="step number to record (default: the checkpoint's own)")
  args = parser.parse_args(argv)
  params = load_params(args.checkpoint)
  step = args.step
  if step is None:
    name = os.path.basename(os.path.abspath(args.checkpoint).rstrip('/'))
    step = int(name) if name.isdigit() else 0
    steps_dir = os.path.join(args.checkpoint, 'checkpoints')
    if os.path.isdir(steps_dir):
      step = max(int(n) for n in os.listdir(steps_dir) if n.isdigit())
  print(t5x_format.save_t5x_checkpoint(params, args.output, step))


if __name__ == '__main__':
  main()
