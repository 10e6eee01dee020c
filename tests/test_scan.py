"""scan_layers: a scanned network computes what the unscanned one does (logits, gradients,
rematerialisation policies, Adafactor training) on one device and on eight, and parameter
trees convert exactly between the two layouts."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from hyperprompt_jax import models, scan_layout, trainer
from hyperprompt_jax.network import Transformer
from tests.helpers import (ALL_VARIANTS, init_params, random_tokens, scanned, shift_right,
                           tiny_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch():
  targets = random_tokens(2, (4, 6), pad_from=[6, 3, 4, 6])
  return {'encoder_input_tokens': random_tokens(1, (4, 8), pad_from=[8, 5, 8, 6]),
          'decoder_target_tokens': targets, 'decoder_input_tokens': shift_right(targets),
          'decoder_loss_weights': (targets > 0).astype(np.int32),
          'task_ids': np.array([0, 2, 1, 2], np.int32)}


def _loss(config, params, batch):
  return models.loss_and_aux(Transformer(config), params, batch, None, config.num_tasks, 1e-4,
                             enable_dropout=False)[0]


def _logits_loss_and_grads(config, params, batch):
  """One compiled function: logits, loss and gradients."""
  def fn(p):
    task_ids = batch['task_ids'] if config.is_conditioned else None
    logits = Transformer(config).apply({'params': p}, *models.model_inputs(batch),
                                       enable_dropout=False, task_ids=task_ids)
    return _loss(config, p, batch), logits
  (loss, logits), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
  return logits, loss, grads


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _unstacked(tree):
  return scan_layout.unstack_flat(_flat(tree))


def _assert_same_tree(expected, got, rtol=1e-5, atol=1e-6):
  expected, got = _flat(expected), _unstacked(got)
  assert sorted(got) == sorted(expected)
  for path, value in expected.items():
    np.testing.assert_allclose(np.asarray(got[path]), np.asarray(value), rtol=rtol, atol=atol,
                               err_msg='/'.join(path))


@pytest.mark.parametrize('variant', ALL_VARIANTS)
def test_scanned_layers_give_the_unscanned_logits_and_gradients(variant):
  config = tiny_config(variant)
  params = init_params(config)
  batch = _batch()
  logits, loss, grads = _logits_loss_and_grads(config, params, batch)
  scan_logits, scan_loss, scan_grads = _logits_loss_and_grads(*scanned(config, params), batch)
  np.testing.assert_allclose(scan_logits, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scan_loss, loss, rtol=1e-5)
  _assert_same_tree(grads, scan_grads)


def test_remat_policies_inside_the_scan_change_nothing_but_memory():
  config = tiny_config('hyperformer')
  scan_config, params = scanned(config, init_params(config))
  batch = _batch()
  _, loss, grads = _logits_loss_and_grads(scan_config, params, batch)
  matmuls = []
  for policy in ('none', 'minimal', 'full'):
    policy_config = dataclasses.replace(scan_config, remat_policy=policy)
    _, remat_loss, remat_grads = _logits_loss_and_grads(policy_config, params, batch)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 remat_grads, grads)
    hlo = jax.jit(jax.grad(lambda p, c=policy_config: _loss(c, p, batch))).lower(params)
    matmuls.append(hlo.as_text().count('dot_general'))
  # Each policy reaches the backward pass: 'minimal' recomputes the batch matmuls of
  # attention, 'full' every matmul of the layer.
  assert matmuls[0] < matmuls[1] < matmuls[2], matmuls


@pytest.mark.parametrize('variant', ['global', 'adapter'])
def test_adafactor_trains_scanned_layers_exactly_like_unscanned_ones(variant):
  """Per-layer Adafactor: factored moments (mlp_dim 128 is factored), parameter-scale RMS
  and update clipping are per layer, so three steps give the same losses and parameters."""
  config = tiny_config(variant, mlp_dim=128, emb_dim=128, head_dim=32)
  params = init_params(config)
  scan_config, scan_params = scanned(config, params)
  batch = _batch()
  results = []
  for cfg, p in ((config, params), (scan_config, scan_params)):  # Adafactor's own step
    optimizer = trainer.make_optimizer(1e-2, p)
    step = jax.jit(trainer.make_train_step(Transformer(cfg), optimizer, cfg.num_tasks))
    state = {'step': np.int32(0), 'params': p, 'opt_state': optimizer.init(p)}
    losses = []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses.append(float(metrics['loss']))
    results.append((losses, state['params']))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
  # Adafactor divides by root mean squares, which magnifies float rounding: parameters
  # agree to 1e-5 (the steps themselves are ~1e-2).
  _assert_same_tree(results[0][1], results[1][1], atol=1e-5)


def test_layouts_convert_both_ways_exactly():
  config = tiny_config('adapter')
  params = _flat(init_params(config))
  stacked = scan_layout.stack_flat(params)
  assert scan_layout.layout_of(stacked) is True and scan_layout.layout_of(params) is False
  assert ('encoder', 'layers', 'mlp_adapter', 'down') in stacked
  assert stacked[('encoder', 'layers', 'mlp', 'wi_0', 'kernel')].shape == (2, 32, 48)
  back = scan_layout.unstack_flat(stacked)
  assert sorted(back) == sorted(params)
  for path, value in params.items():
    np.testing.assert_array_equal(back[path], value)
  with pytest.raises(ValueError, match='are not 0 .. 1'):
    scan_layout.stack_flat({('encoder', 'layers_0', 'x'): np.zeros(1),
                            ('encoder', 'layers_2', 'x'): np.zeros(1)})


EIGHT_DEVICES = '''
import jax, numpy as np
from hyperprompt_jax import models, partitioning, trainer
from hyperprompt_jax.network import Transformer
from tests.helpers import init_params, scanned, tiny_config
from tests.test_scan import _batch, _assert_same_tree
config = tiny_config('global', mlp_dim=128, emb_dim=128, head_dim=32, vocab_size=64)
params = init_params(config)
scan_config, scan_params = scanned(config, params)
batch = _batch()
batch = {k: np.concatenate([v, v]) for k, v in batch.items()}  # 8 rows: one per data shard
losses = {}
for name, cfg, p, partitions in (('one', config, params, 1), ('scan8', scan_config, scan_params, 2)):
  model = Transformer(cfg)
  part = partitioning.Partitioner(partitions, devices=jax.devices()[:4 * partitions if partitions > 1 else 1])
  abstract = models.init_variables_abstract(model)
  shardings = part.param_shardings(abstract)
  p = jax.device_put(p, shardings)
  optimizer = trainer.make_optimizer(1e-2, p)
  opt_state = optimizer.init(p)
  state = {'step': np.int32(0), 'params': p, 'opt_state': opt_state}
  step = jax.jit(trainer.make_train_step(model, optimizer, cfg.num_tasks))
  losses[name] = []
  with part.context():
    sharded = part.shard_batch(batch, 8)
    for _ in range(3):
      state, metrics = step(state, sharded)
      losses[name].append(float(metrics['loss']))
  if name == 'scan8':
    kernel = state['params']['encoder']['layers']['mlp']['wi_0']['kernel']
    assert kernel.sharding.spec[:3] == (None, None, 'model'), kernel.sharding.spec
    assert len(jax.devices()) == 8 and len(kernel.sharding.device_set) == 8
  losses[name + '_params'] = state['params']
np.testing.assert_allclose(losses['scan8'], losses['one'], rtol=1e-5)
_assert_same_tree(losses['one_params'], losses['scan8_params'], atol=5e-5)  # sharded sums: other order
print('losses', losses['one'], losses['scan8'])
'''


def test_scanned_on_eight_devices_trains_like_unscanned_on_one():
  """2-way model parallel x 4-way data parallel, scanned, against one device unscanned:
  three Adafactor steps give the same losses and parameters."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', EIGHT_DEVICES], env=env, capture_output=True,
                        text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'losses' in proc.stdout
