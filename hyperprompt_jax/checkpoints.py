"""Checkpoint I/O in one place: our runs' checkpoints (orbax, written atomically, with the
input position beside each step), restoring a run's parameters, and reading any checkpoint
as INITIAL_CHECKPOINT_PATH (ours or T5X's, via `t5x_format`). `hf_convert` builds on it.

Layout under MODEL_DIR (t5x's checkpoint names):
  checkpoint_<step>/       orbax (train state: step, params, optimizer state; the step's
                           benchmark score when it was evaluated)
  input_state/step_<step>/ tf.data iterator position per host (written before the step's
                           orbax save finalises, so every finished checkpoint has one)
The last `keep` checkpoints are kept, and beside them the one with the best benchmark score.

    python -m hyperprompt_jax.checkpoints to-t5x --checkpoint MODEL_DIR --output DIR
writes the run's parameters as DIR/checkpoint_<step> in t5x's layout.
"""

import argparse
import json
import logging
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from tensorflow.io import gfile

from hyperprompt_jax import files, input_pipeline, models, scan_layout, t5x_format
from hyperprompt_jax.network import Transformer

log = logging.getLogger('hyperprompt_jax')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used with this model (message names the fix)."""


def _flat(tree) -> Dict[str, Any]:
  return {'/'.join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def shape_mismatches(stored, expected) -> List[str]:
  """Human-readable differences between two trees of arrays / shape structs."""
  a, b = _flat(stored), _flat(expected)
  out = [f'{k}: checkpoint {tuple(a[k].shape)} vs model {tuple(b[k].shape)}'
         for k in sorted(set(a) & set(b)) if tuple(a[k].shape) != tuple(b[k].shape)]
  out += [f'{k}: only in checkpoint' for k in sorted(set(a) - set(b))]
  out += [f'{k}: only in model' for k in sorted(set(b) - set(a))]
  return out


STEP_PREFIX = 'checkpoint'
OLD_LAYOUT = 'checkpoints'  # before t5x's names: MODEL_DIR/checkpoints/<step>/


def step_of_path(path: str) -> Optional[int]:
  """The step a checkpoint directory's name gives (checkpoint_<N>, or <N> of our old layout)."""
  m = re.fullmatch(r'(?:checkpoint_)?(\d+)', os.path.basename(path.rstrip('/')))
  return int(m.group(1)) if m else None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__


def _score(metrics) -> float:
  return float(metrics['score'])


class CheckpointStore:
  """Saves and restores the train state of one run (MODEL_DIR)."""

  def __init__(self, model_dir: str, keep: int = 3, read_only: bool = False):
    if not read_only and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
      raise CheckpointError(f'train.train.keep_checkpoints={keep!r} would delete every '
                            'checkpoint it saves: keep at least 1 (the latest N are kept, and '
                            'the best-scored one besides).')
    self.model_dir = model_dir
    self.input_dir = os.path.join(model_dir, 'input_state')
    old = os.path.join(model_dir, OLD_LAYOUT)
    root = model_dir
    if gfile.isdir(old) and any(n.rstrip('/').isdigit() for n in gfile.listdir(old)):
      if not read_only:
        raise CheckpointError(
            f'{old} holds checkpoints in the old layout (checkpoints/<step>): rename each to '
            f'{model_dir}/checkpoint_<step> (t5x\'s names) to continue this run, or use a new '
            'MODEL_DIR.')
      root, prefix = old, None
    else:
      prefix = STEP_PREFIX
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(n=keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=_score, n=1,
                                      keep_checkpoints_without_metrics=False)])
    self.root = os.path.join(files.absolute(root))
    self.manager = ocp.CheckpointManager(
        self.root, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(step_prefix=prefix, create=not read_only,
                                             preservation_policy=policy, read_only=read_only,
                                             enable_async_checkpointing=False))
    self._prefix = prefix

  def step_dir(self, step: int) -> str:
    return os.path.join(self.root, f'{self._prefix}_{step}' if self._prefix else str(step))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def stored_params(self, step: int):
    """Metadata (shapes, dtypes) of a saved step's params, without reading arrays."""
    stored = self.manager.item_metadata(step)
    return getattr(stored, 'tree', stored)['params']

  def save(self, step: int, state, iterator=None, score: Optional[float] = None) -> None:
    """`score`: the step's benchmark score, if it was evaluated (the best is kept)."""
    if iterator is not None:
      iterator.save(self.input_dir, step)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True,
                      metrics=None if score is None else {'score': float(score)})
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      input_pipeline.prune_input_states(self.input_dir, set(self.manager.all_steps()))

  def check_fits(self, step: int, abstract_params) -> None:
    stored = self.stored_params(step)
    _check_same_layout(stored, abstract_params, f'Checkpoint {step} in {self.model_dir}')
    problems = shape_mismatches(stored, abstract_params)
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
    if iterator is not None:
      try:
        restarts = iterator.restore(self.input_dir, step)
      except Exception as e:  # pylint: disable=broad-except  (tf raises several kinds)
        raise CheckpointError(f'the input position of step {step} cannot be read '
                              f'({_first_line(e)})') from e
      if restarts:
        log.warning('The input restarts from its beginning at step %d: %s.', step, restarts)
    return state

  def restore_latest_readable(self, abstract_state, iterator=None):
    """(state, step) of the newest checkpoint that can be read. A checkpoint (or its input
    position) that cannot be read, e.g. cut short by a full disk, is passed over with a
    warning naming it, for the one before; a checkpoint that does not fit the model is an
    error at once. (None, None) when there is none."""
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        self.check_fits(step, abstract_state['params'])
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (unreadable metadata)
        failures.append((step, e))
        log.warning('%s cannot be read (%s): trying the checkpoint before it.',
                    self.step_dir(step), _first_line(e))
        continue
      try:
        state = self.restore(step, abstract_state, iterator)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore/tf errors)
        failures.append((step, e))
        log.warning('%s cannot be read (%s): trying the checkpoint before it.',
                    self.step_dir(step), _first_line(e))
        continue
      self._set_aside([s for s, _ in failures])
      return state, step
    if failures:
      step, e = failures[0]
      raise CheckpointError(f'no checkpoint in {self.model_dir} can be read (the newest, '
                            f'{step}: {_first_line(e)}): restore the folder from a copy, or use '
                            'a new MODEL_DIR.')
    return None, None

  def _set_aside(self, steps) -> None:
    """Unreadable checkpoints are renamed <dir>.unreadable (kept, not deleted), so the run
    can save those steps again."""
    if steps and jax.process_index() == 0:
      for step in steps:
        path = self.step_dir(step)
        try:
          gfile.rename(path, path + '.unreadable', overwrite=True)
        except Exception as e:  # pylint: disable=broad-except
          raise CheckpointError(f'{path} cannot be read and cannot be renamed '
                                f'({_first_line(e)}): move it out of the way (e.g. to '
                                f'{path}.unreadable) and rerun.') from e
        log.warning('Renamed %s to %s.unreadable; the run continues from an earlier step.',
                    path, path)
    if steps:
      self.manager.reload()

  def restore_params(self, step: int, abstract_params):
    """Only the parameters of a step (no optimizer state is read), into the shardings of
    `abstract_params` (ShapeDtypeStructs; without a sharding: this process's first device).
    A run saved with the other scan_layers layout is converted layer by layer."""
    shapes, read = _orbax_source(os.path.join(self.step_dir(step), 'default'), 'params')
    wanted = _flat(abstract_params)
    shapes, read = _in_layout_of(shapes, read, wanted)
    problems = _shape_errors({k: v.shape for k, v in wanted.items()}, shapes)
    problems += [f'{k}: only in model' for k in sorted(set(wanted) - set(shapes))]
    if problems:
      raise CheckpointError(
          f'Checkpoint {step} in {self.model_dir} does not fit this model ({len(problems)} '
          f'differences, e.g. {problems[0]}): use the gin config it was trained with.')
    return _unflat(read(wanted))


def restore_params(model: Transformer, model_dir: str, step: Optional[int] = None,
                   shardings=None):
  """(params, step) of `step` (default: the latest) of a run, checked against the model."""
  store = CheckpointStore(model_dir, read_only=True)
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


def _our_orbax_dir(path: str) -> str:
  """The orbax directory of one of our checkpoints: a step directory (checkpoint_<step>) or
  a MODEL_DIR (whose latest step is taken)."""
  path = files.absolute(path).rstrip('/')
  for candidate in (path, os.path.join(path, OLD_LAYOUT)):
    names = [n.rstrip('/') for n in gfile.listdir(candidate)] if gfile.isdir(candidate) else []
    steps = sorted((step_of_path(n), n) for n in names if step_of_path(n) is not None)
    if steps and step_of_path(path) is None:
      path = os.path.join(candidate, steps[-1][1])
      break
  if not gfile.isdir(path):
    raise CheckpointError(f'INITIAL_CHECKPOINT_PATH {path} is not a checkpoint directory.')
  for item in ('default', ''):
    directory = os.path.join(path, item) if item else path
    if gfile.isdir(directory) and gfile.exists(os.path.join(directory, '_METADATA')):
      return directory
  raise CheckpointError(f'No orbax checkpoint found at {path}: point INITIAL_CHECKPOINT_PATH '
                        'at a step directory (MODEL_DIR/checkpoint_<step>).')


def load_params(path: str, scanned: Optional[bool] = False) -> Dict[str, Any]:
  """The whole 'params' tree (numpy, on this host) of a checkpoint: a T5X checkpoint_<step>
  directory (orbax or legacy layout) or one of ours, its layers unscanned (t5x's and HF's
  layout; `scanned=True`: stacked; None: as stored). For conversions; training restores
  sharded with `load_initial_params`."""
  if t5x_format.is_t5x_checkpoint(path):
    params = t5x_format.load_t5x_params(path)
  else:
    restored = ocp.StandardCheckpointer().restore(_our_orbax_dir(path))
    params = jax.tree.map(np.asarray, restored['params'])
  if scanned is None:
    return params
  return traverse_util.unflatten_dict(scan_layout.to_layout(
      traverse_util.flatten_dict(params), scanned))


def _orbax_source(directory: str, key: str):
  """Stored shapes and a sharded partial reader of the subtree `key` of an orbax PyTree."""
  metadata = ocp.PyTreeCheckpointer().metadata(directory)
  tree = getattr(metadata, 'item_metadata', None) or metadata
  tree = getattr(tree, 'tree', tree)
  shapes = {k: tuple(v.shape) for k, v in _flat(tree[key]).items() if hasattr(v, 'shape')}

  def read(wanted: Dict[str, jax.ShapeDtypeStruct]) -> Dict[str, jax.Array]:
    item = {key: traverse_util.unflatten_dict({tuple(k.split('/')): v
                                               for k, v in wanted.items()})}
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True))
    return _flat(restored[key])
  return shapes, read


def _unflat(flat: Dict[str, Any]):
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def _layout(names) -> Optional[bool]:
  return scan_layout.layout_of(tuple(k.split('/')) for k in names)


def _check_same_layout(stored, expected, what: str) -> None:
  """One line naming scan_layers when a run's checkpoint and the model differ in it (a run
  resumes only in the layout it was saved in: its optimizer state is laid out the same)."""
  was, now = _layout(_flat(stored)), _layout(_flat(expected))
  if was is not None and now is not None and was != now:
    raise CheckpointError(
        f'{what} was saved with scan_layers={was} and this model has scan_layers={now}: a run '
        f'resumes only as it was saved; set network.HyperPromptConfig.scan_layers={was}, or '
        'start a new MODEL_DIR with INITIAL_CHECKPOINT_PATH pointing at this checkpoint '
        '(its parameters convert).')


def _sub_sharding(sharding, leading: bool):
  """`sharding` for one layer of a stacked array (leading=False drops the 'layers' axis) or
  for the stack of arrays sharded like `sharding` (leading=True adds it, unsharded)."""
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return sharding  # a single device's: fits any shape
  spec = tuple(sharding.spec)
  spec = (None,) + spec if leading else spec[1:]
  return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))


def _in_layout_of(shapes: Dict[str, Tuple], read: Callable, model: Dict[str, Any]):
  """(shapes, read) of a checkpoint source re-expressed in the scan layout of `model`'s
  names. Stacking reads each layer into the layer's slice of the target sharding and stacks
  on the devices; unstacking reads the stack sharded like its layers and slices it. Either
  way no process holds more than its own shards."""
  source, target = _layout(shapes), _layout(model)
  if source is None or target is None or source == target:
    return shapes, read
  split = lambda k: tuple(k.split('/'))
  join = '/'.join
  if target:  # unscanned checkpoint -> scanned model
    layers = {}
    for name, shape in shapes.items():
      found = scan_layout.scanned_source(split(name))
      if found:
        layers.setdefault(join(found[0]), {})[found[1]] = shape
    new_shapes = {k: v for k, v in shapes.items() if not scan_layout.scanned_source(split(k))}
    for name, by_layer in layers.items():
      new_shapes[name] = (len(by_layer),) + tuple(by_layer[0])

    def read_stacked(wanted):
      plain = {k: v for k, v in wanted.items() if k not in layers}
      out = read(plain) if plain else {}
      for name in (k for k in wanted if k in layers):
        target_struct = wanted[name]
        layer_sharding = _sub_sharding(target_struct.sharding, leading=False)
        parts = read({join(scan_layout.unscanned_path(split(name), i)): jax.ShapeDtypeStruct(
            target_struct.shape[1:], target_struct.dtype, sharding=layer_sharding)
            for i in range(target_struct.shape[0])})
        ordered = [parts[join(scan_layout.unscanned_path(split(name), i))]
                   for i in range(target_struct.shape[0])]
        out[name] = jax.jit(lambda *a: jax.numpy.stack(a),
                            out_shardings=target_struct.sharding)(*ordered)
        del parts, ordered
      return out
    return new_shapes, read_stacked

  # scanned checkpoint -> unscanned model
  stacked = {k: v for k, v in shapes.items() if scan_layout.is_scanned_path(split(k))}
  new_shapes = {k: v for k, v in shapes.items() if k not in stacked}
  for name, shape in stacked.items():
    for i in range(shape[0]):
      new_shapes[join(scan_layout.unscanned_path(split(name), i))] = tuple(shape[1:])

  def read_unstacked(wanted):
    out, groups = {}, {}
    for k, v in wanted.items():
      found = scan_layout.scanned_source(split(k))
      if found and join(found[0]) in stacked:
        groups.setdefault(join(found[0]), {})[found[1]] = (k, v)
      else:
        out[k] = v
    out = read(out) if out else {}
    for name, by_layer in groups.items():
      _, first = next(iter(by_layer.values()))
      whole = read({name: jax.ShapeDtypeStruct(stacked[name], first.dtype,
                                               sharding=_sub_sharding(first.sharding, True))})
      for i, (k, v) in by_layer.items():
        out[k] = jax.jit(lambda a, i=i: a[i], out_shardings=v.sharding)(whole[name])
      del whole
    return out
  return new_shapes, read_unstacked


def _shape_errors(model_shapes: Dict[str, Tuple], stored_shapes: Dict[str, Tuple]) -> List[str]:
  return [f'{k}: checkpoint {tuple(stored_shapes[k])} vs model {tuple(shape)}'
          for k, shape in model_shapes.items()
          if k in stored_shapes and tuple(stored_shapes[k]) != tuple(shape)]


def load_initial_params(path: str, params, shardings, task_axes: Optional[Dict[str, int]] = None
                        ) -> Tuple[Any, Dict[str, List[str]]]:
  """INITIAL_CHECKPOINT_PATH into a freshly initialised model without a host copy of either:
  every stored parameter the model has is read straight into its target sharding (each
  process reads only the slices its devices hold); the others keep their on-device
  initialisation. `task_axes` ({name: axis} of task-indexed parameters): a checkpoint with
  fewer tasks fills the first rows of those and the new tasks' rows keep their
  initialisation (adding tasks to a trained model). Returns the params and a report
  ('loaded', 'initialised', 'unused', 'grown': {name: [old, new] tasks}, and 'step': the
  checkpoint's step, from its name checkpoint_<step>, else 0)."""
  if t5x_format.is_orbax_layout(path):
    shapes, read = _orbax_source(os.path.join(path, 'state'), 'target')
    step = step_of_path(path)
  elif t5x_format.is_t5x_checkpoint(path):
    shapes, read = t5x_format.legacy_source(path)
    step = step_of_path(path)
  else:
    directory = _our_orbax_dir(path)
    shapes, read = _orbax_source(directory, 'params')
    step = step_of_path(os.path.dirname(directory) if directory.endswith('default') else directory)
  init_flat, shard_flat = _flat(params), _flat(shardings)
  shapes, read = _in_layout_of(shapes, read, init_flat)
  grown = {k: axis for k, axis in (task_axes or {}).items()
           if k in shapes and _grows(shapes[k], init_flat[k].shape, axis)}
  wrong = _shape_errors({k: v.shape for k, v in init_flat.items() if k not in grown}, shapes)
  if wrong:
    raise CheckpointError(f'INITIAL_CHECKPOINT_PATH has parameters of other shapes '
                          f'({len(wrong)}, e.g. {wrong[0]}): use a checkpoint of this model size.')
  wanted = {k: jax.ShapeDtypeStruct(shapes[k] if k in grown else v.shape, v.dtype,
                                    sharding=shard_flat[k])
            for k, v in init_flat.items() if k in shapes}
  loaded = read(wanted) if wanted else {}
  for k, axis in grown.items():  # old tasks' rows from the checkpoint, new ones as initialised
    loaded[k] = jax.jit(lambda new, old, a=axis: jax.lax.dynamic_update_slice_in_dim(
        new, old.astype(new.dtype), 0, a), out_shardings=shard_flat[k])(init_flat[k], loaded[k])
  merged = {k: loaded.get(k, v) for k, v in init_flat.items()}
  report = {'loaded': sorted(loaded), 'initialised': sorted(set(init_flat) - set(loaded)),
            'unused': sorted(set(shapes) - set(init_flat)), 'step': step or 0,
            'grown': {k: [shapes[k][a], init_flat[k].shape[a]] for k, a in grown.items()}}
  return _unflat(merged), report


def _grows(stored: Tuple, wanted: Tuple, axis: int) -> bool:
  """A stored task table with fewer tasks than the model's, equal elsewhere."""
  stored, wanted = tuple(stored), tuple(wanted)
  return (len(stored) == len(wanted) and stored[axis] < wanted[axis]
          and all(a == b for i, (a, b) in enumerate(zip(stored, wanted)) if i != axis))


TASK_IDS_FILE = 'task_ids.json'


def check_task_ids(model_dir: str, task_ids: Dict[str, int], write: bool = False) -> None:
  """The task ids a run was trained with, MODEL_DIR/task_ids.json ({seqio task: id}, written
  by train when it starts and extended when tasks are added): a task whose id differs now is
  an error, never a model silently reading another task's row. `write` records `task_ids`
  (process 0)."""
  path = os.path.join(model_dir, TASK_IDS_FILE)
  stored = {}
  if gfile.exists(path):
    with gfile.GFile(path) as f:
      stored = json.load(f)
  changed = sorted(k for k in task_ids if k in stored and stored[k] != task_ids[k])
  if changed:
    k = changed[0]
    raise CheckpointError(
        f'{k} had task id {stored[k]} when {model_dir} was trained and has {task_ids[k]} now '
        f'({len(changed)} task(s) changed): the task table changed since; use the table the '
        f'model was trained with, or start a new MODEL_DIR.')
  merged = {**stored, **task_ids}
  if write and merged != stored and jax.process_index() == 0:
    files.write_text_atomic(path, json.dumps(merged, indent=1, sort_keys=True))


def task_axes(abstract_variables) -> Dict[str, int]:
  """{parameter name: index of its 'tasks' axis} for every task-indexed parameter."""
  from hyperprompt_jax import partitioning  # pylint: disable=import-outside-toplevel
  specs = _flat(partitioning.params_logical_specs(abstract_variables))
  return {k: tuple(spec).index('tasks') for k, spec in specs.items()
          if spec is not None and 'tasks' in tuple(spec)}


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
    step = step_of_path(os.path.dirname(_our_orbax_dir(args.checkpoint))) or 0
  print(t5x_format.save_t5x_checkpoint(params, args.output, step))


if __name__ == '__main__':
  main()
