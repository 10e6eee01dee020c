"""The T5X checkpoint format, read and written without t5x: a checkpoint_N's parameters
('target'), or ours written in t5x's orbax layout (`python -m hyperprompt_jax.checkpoints
to-t5x --checkpoint MODEL_DIR --output DIR` writes DIR/checkpoint_<step>).

Two formats exist:
  * orbax (t5x today): checkpoint_N/state/ is an orbax PyTree with 'target' and 'state';
  * legacy (the public T5.1.1 checkpoints, e.g. gs://t5-data/pretrained_models/t5x/
    t5_1_1_base/checkpoint_1000000): checkpoint_N/checkpoint is msgpack whose large leaves
    are tensorstore zarr specs pointing at folders beside it ('target.encoder.layers_0...').
"""

import os
from typing import Any, Callable, Dict, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import serialization, traverse_util
from tensorflow.io import gfile


def is_t5x_checkpoint(path: str) -> bool:
  return gfile.exists(os.path.join(path, 'checkpoint')) or is_orbax_layout(path)


def is_orbax_layout(path: str) -> bool:
  """t5x's orbax layout: checkpoint_N/state/ holds an orbax PyTree ('target', 'state')."""
  return gfile.exists(os.path.join(path, 'state', '_METADATA'))


def _is_ts_spec(node) -> bool:
  return isinstance(node, dict) and 'driver' in node and 'kvstore' in node


def _open_ts(spec: Dict[str, Any], ckpt_dir: str):
  """The tensorstore of a leaf spec, opened (metadata only: nothing is read yet)."""
  spec = dict(spec)
  kvstore = dict(spec['kvstore'])
  rel = kvstore.pop('path', None) or spec.pop('path')
  if ckpt_dir.startswith('gs://'):
    bucket, _, prefix = ckpt_dir[len('gs://'):].partition('/')
    kvstore = {'driver': 'gcs', 'bucket': bucket, 'path': os.path.join(prefix, rel)}
  else:
    kvstore = {'driver': 'file', 'path': os.path.join(ckpt_dir, rel)}
  spec['kvstore'] = kvstore
  return ts.open(spec).result()


def _read_ts(spec: Dict[str, Any], ckpt_dir: str) -> np.ndarray:
  return np.asarray(_open_ts(spec, ckpt_dir).read().result())


def _resolve(node, ckpt_dir: str):
  if _is_ts_spec(node):
    return _read_ts(node, ckpt_dir)
  if isinstance(node, dict):
    return {k: _resolve(v, ckpt_dir) for k, v in node.items()}
  return np.asarray(node)


def load_t5x_params(path: str) -> Dict[str, Any]:
  """The 'target' parameter tree (numpy) of a T5X checkpoint directory (either format)."""
  path = path.rstrip('/')
  if gfile.exists(os.path.join(path, 'state', '_METADATA')):
    restored = ocp.PyTreeCheckpointer().restore(os.path.join(path, 'state'))
    return _resolve(restored['target'], path)
  return _resolve(_legacy_target(path), path)


def _legacy_target(path: str):
  """The legacy msgpack's 'target' tree: small arrays inline, large ones as tensorstore
  specs of the folders beside it (nothing large is read here)."""
  legacy = os.path.join(path, 'checkpoint')
  if not gfile.exists(legacy):
    raise ValueError(f'{path} is not a T5X checkpoint (no state/ or checkpoint file): point '
                     'INITIAL_CHECKPOINT_PATH at a checkpoint_<step> directory.')
  with gfile.GFile(legacy, 'rb') as f:
    contents = serialization.msgpack_restore(f.read())
  target = contents.get('optimizer', contents).get('target')
  if target is None:
    raise ValueError(f'{legacy} holds no optimizer target: not a T5X training checkpoint.')
  return target


def legacy_source(path: str) -> Tuple[Dict[str, Tuple], Callable]:
  """Stored shapes of a legacy T5X checkpoint's parameters, and a reader that builds each
  wanted parameter in its target sharding slice by slice (`jax.make_array_from_callback`:
  this process reads only the slices its devices hold)."""
  path = path.rstrip('/')
  leaves = {'/'.join(k): v for k, v in traverse_util.flatten_dict(
      _legacy_target(path), is_leaf=lambda _, v: _is_ts_spec(v)).items()}
  stores = {k: _open_ts(v, path) if _is_ts_spec(v) else np.asarray(v) for k, v in leaves.items()}
  shapes = {k: tuple(v.shape) for k, v in stores.items()}

  def read(wanted):
    out = {}
    for name, target in wanted.items():
      store = stores[name]

      def slice_of(index, store=store, dtype=target.dtype):
        part = store[index]
        part = part if isinstance(part, np.ndarray) else part.read().result()
        return np.asarray(part).astype(dtype)
      out[name] = jax.make_array_from_callback(target.shape, target.sharding, slice_of)
    return out
  return shapes, read


def save_t5x_checkpoint(params: Dict[str, Any], directory: str, step: int) -> str:
  """Writes `params` as t5x's orbax checkpoint_<step>/state ('target' plus the step; t5x
  initialises the optimizer state it does not find)."""
  path = os.path.join(os.path.abspath(directory), f'checkpoint_{step}')
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, 'state'),
                      {'target': params, 'state': {'step': np.int32(step)}})
  return path

