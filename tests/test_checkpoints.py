"""T5X checkpoints (both layouts) and ours restore into every variant, unscanned or scanned;
export of a scanned run round-trips; remat is exact."""

import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization, traverse_util

from hyperprompt_jax import checkpoints, scan_layout, t5x_format
from hyperprompt_jax.network import Transformer
from tests.helpers import (CONDITIONED, init_params, random_tokens, scanned, shift_right,
                           tiny_config)


def _t5_params():
  return jax.tree.map(np.asarray, init_params(tiny_config('mtl')))


def _write_legacy_t5x(directory, params):
  """The legacy T5X layout: msgpack 'checkpoint' whose leaves are tensorstore zarr specs."""
  flat = traverse_util.flatten_dict(params)
  specs = {}
  for path, value in flat.items():
    name = '.'.join(('target',) + path)
    spec = {'driver': 'zarr', 'dtype': 'float32', 'kvstore': {'driver': 'file', 'path': name},
            'metadata': {'shape': list(value.shape), 'chunks': list(value.shape),
                         'compressor': {'id': 'gzip'}}}
    write = dict(spec, kvstore={'driver': 'file', 'path': os.path.join(directory, name)})
    ts.open(write, create=True, open=True).result().write(value).result()
    specs[path] = spec
  target = traverse_util.unflatten_dict(specs)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'checkpoint'), 'wb') as f:
    f.write(serialization.msgpack_serialize(
        {'version': 3, 'optimizer': {'target': target, 'state': {'step': np.int64(1000000)}}}))


def _write_orbax_t5x(directory, params):
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, 'state'),
                      {'target': params, 'state': {'step': np.int32(7)}})


@pytest.mark.parametrize('layout', ['legacy', 'orbax'])
def test_t5x_format_read_back_exactly(layout, tmp_path):
  params = _t5_params()
  directory = str(tmp_path / 'checkpoint_1000000')
  (_write_legacy_t5x if layout == 'legacy' else _write_orbax_t5x)(directory, params)
  assert t5x_format.is_t5x_checkpoint(directory)
  loaded = checkpoints.load_params(directory)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


@pytest.mark.parametrize('variant', CONDITIONED)
def test_t5_checkpoint_restores_into_every_variant(variant, tmp_path):
  t5 = _t5_params()
  directory = str(tmp_path / 'checkpoint_1')
  _write_legacy_t5x(directory, t5)
  cfg = tiny_config(variant)
  initial = init_params(cfg, seed=5)
  shardings = jax.tree.map(lambda x: x.sharding, initial)
  merged, report = checkpoints.load_initial_params(directory, initial, shardings)
  flat_t5 = {'/'.join(k): v for k, v in traverse_util.flatten_dict(t5).items()}
  assert report['loaded'] == sorted(flat_t5) and not report['unused']
  assert report['initialised'] and all(k not in flat_t5 for k in report['initialised'])
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(merged).items()}
  for name, value in flat_t5.items():
    np.testing.assert_array_equal(flat[name], value)
  flat_init = {'/'.join(k): v for k, v in traverse_util.flatten_dict(initial).items()}
  for name in report['initialised']:
    np.testing.assert_array_equal(flat[name], flat_init[name])


def test_shape_mismatch_is_named(tmp_path):
  directory = str(tmp_path / 'checkpoint_1')
  _write_legacy_t5x(directory, _t5_params())
  initial = init_params(tiny_config('global', mlp_dim=40))
  with pytest.raises(checkpoints.CheckpointError, match='mlp/wi_0/kernel: checkpoint'):
    checkpoints.load_initial_params(directory, initial,
                                    jax.tree.map(lambda x: x.sharding, initial))


def test_not_a_checkpoint_is_reported(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='No orbax checkpoint'):
    checkpoints.load_params(str(tmp_path))


@pytest.mark.parametrize('variant', ['global', 'adapter'])
def test_remat_changes_nothing_but_memory(variant):
  cfg = tiny_config(variant)
  params = init_params(cfg)
  x = random_tokens(0, (2, 7))
  y = random_tokens(1, (2, 5))
  batch = (x, shift_right(y), y)
  ids = np.array([0, 2], np.int32)

  def loss(p, c):
    return Transformer(c).apply({'params': p}, *batch, enable_dropout=False,
                                task_ids=ids).sum()
  plain = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg)))(params)
  remat = jax.jit(jax.value_and_grad(lambda p: loss(p, dataclasses.replace(cfg, remat=True))))(
      params)
  np.testing.assert_allclose(plain[0], remat[0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), plain[1],
               remat[1])


def test_our_checkpoint_exports_to_the_t5x_layout_and_reads_back(tmp_path):
  params = jax.tree.map(np.asarray, init_params(tiny_config('global')))
  path = t5x_format.save_t5x_checkpoint(params, str(tmp_path), 42)
  assert path.endswith('checkpoint_42') and t5x_format.is_t5x_checkpoint(path)
  jax.tree.map(np.testing.assert_array_equal, checkpoints.load_params(path), params)



def test_a_task_whose_id_changed_since_training_is_refused(tmp_path):
  """MODEL_DIR/task_ids.json keeps the ids a run was trained with: reading the model with a
  task table that moved a task's id (SuperGLUE's 0-7 became 8-15) is a one-line error;
  adding tasks extends the record."""
  model_dir = str(tmp_path)
  checkpoints.check_task_ids(model_dir, {'hyperprompt_super_glue_cb': 1}, write=True)
  with pytest.raises(checkpoints.CheckpointError,
                     match='hyperprompt_super_glue_cb had task id 1 when .* has 9 now'):
    checkpoints.check_task_ids(model_dir, {'hyperprompt_super_glue_cb': 9})
  checkpoints.check_task_ids(model_dir, {'hyperprompt_super_glue_cb': 1, 'new_task': 16},
                             write=True)
  with open(os.path.join(model_dir, 'task_ids.json'), encoding='utf-8') as f:
    assert json.load(f) == {'hyperprompt_super_glue_cb': 1, 'new_task': 16}


@pytest.mark.parametrize('layout', ['legacy', 'orbax'])
def test_t5x_checkpoints_restore_into_a_scanned_model(layout, tmp_path):
  """Each stacked parameter is built from the checkpoint's layers_<i>, in order."""
  t5 = _t5_params()
  directory = str(tmp_path / 'checkpoint_1')
  (_write_legacy_t5x if layout == 'legacy' else _write_orbax_t5x)(directory, t5)
  initial = init_params(scanned(tiny_config('global')), seed=5)
  merged, report = checkpoints.load_initial_params(
      directory, initial, jax.tree.map(lambda x: x.sharding, initial))
  expected = scan_layout.stack_flat(traverse_util.flatten_dict(t5))
  flat = traverse_util.flatten_dict(merged)
  assert sorted(report['loaded']) == sorted('/'.join(k) for k in expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(flat[path], value)
  assert flat[('encoder', 'layers', 'mlp', 'wi_0', 'kernel')].shape[0] == 2


def test_a_scanned_run_exports_and_converts_back_exactly(tmp_path):
  """A scanned run's checkpoint: to-t5x writes t5x's unscanned layout; that, and the run
  itself, restore into a scanned model and an unscanned one with every value in place."""
  config = scanned(tiny_config('adapter'))
  params = jax.tree.map(np.asarray, init_params(config))
  store = checkpoints.CheckpointStore(str(tmp_path / 'run'))
  store.save(4, {'step': np.int32(4), 'params': params})
  checkpoints.main(['to-t5x', '--checkpoint', str(tmp_path / 'run'), '--output',
                    str(tmp_path / 't5x')])
  exported = str(tmp_path / 't5x' / 'checkpoint_4')
  unstacked = scan_layout.unstack_flat(traverse_util.flatten_dict(params))
  stored = traverse_util.flatten_dict(checkpoints.load_params(exported, scanned=None))
  assert sorted(stored) == sorted(unstacked)
  for path, value in unstacked.items():
    np.testing.assert_array_equal(stored[path], value)
  for source in (exported, str(tmp_path / 'run')):
    for target_config in (config, dataclasses.replace(config, scan_layers=False)):
      initial = init_params(target_config, seed=9)
      merged, _ = checkpoints.load_initial_params(
          source, initial, jax.tree.map(lambda x: x.sharding, initial))
      want = params if target_config.scan_layers else traverse_util.unflatten_dict(unstacked)
      jax.tree.map(np.testing.assert_array_equal, merged, want)
  # eval/infer's restore converts too; resuming the run unscanned is one line naming the option.
  model = Transformer(dataclasses.replace(config, scan_layers=False))
  restored, step = checkpoints.restore_params(model, str(tmp_path / 'run'))
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, restored, traverse_util.unflatten_dict(unstacked))
  with pytest.raises(checkpoints.CheckpointError,
                     match='saved with scan_layers=True and this model has scan_layers=False'):
    store.check_fits(4, traverse_util.unflatten_dict(unstacked))
