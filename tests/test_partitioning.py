"""Logical axis rules with t5x's semantics for every (parameter, activation) partitioning
dims combination, and the mesh laid out by jax's create_device_mesh."""

import os
import subprocess
import sys

import pytest
from flax.linen import partitioning as nn_partitioning

from hyperprompt_jax import partitioning

SPECS = [('embed', 'mlp'), ('mlp', 'embed'), ('embed', 'heads', 'kv'), ('heads', 'kv', 'embed'),
         ('vocab', 'embed'), ('embed', 'vocab'), ('batch', 'length', 'embed'),
         ('batch', 'length', 'mlp'), ('batch', 'length', 'heads', 'kv'), ('embed',),
         ('tasks', 'prompt', 'heads', 'kv'), ('relpos_buckets', 'heads')]
D, M = 'data', 'model'
# What t5x's standard_logical_axis_rules(activation_partitioning_dims, parameter_partitioning_dims)
# give each spec, worked out by hand from its rule lists (flax gives a mesh axis to the first
# rule, in rule order, that asks for it while it is free).
EXPECTED = {
    (1, 1): [(None, M), (M, None), (None, M, None), (M, None, None), (M, None), (None, M),
             (D, None, None), (D, None, M), (D, None, M, None), (None,), (None, None, M, None),
             (None, M)],
    (2, 1): [(D, M), (M, D), (D, M, None), (M, None, D), (M, D), (D, M),
             (D, None, None), (D, None, M), (D, None, M, None), (D,), (None, None, M, None),
             (None, M)],
    (1, 2): [(None, M), (M, None), (None, M, None), (M, None, None), (M, None), (None, M),
             (D, None, M), (D, None, M), (D, None, M, None), (M,), (None, None, M, None),
             (None, M)],
    (2, 2): [(D, M), (M, D), (D, M, None), (M, None, D), (M, D), (D, M),
             (D, None, M), (D, None, M), (D, None, M, None), (M,), (None, None, M, None),
             (None, M)],
}


@pytest.mark.parametrize('dims', sorted(EXPECTED), ids=lambda d: f'params{d[0]}-acts{d[1]}')
def test_mesh_axes_of_every_logical_axis_are_t5x_s(dims):
  rules = partitioning.logical_axis_rules(*dims)
  got = [tuple(nn_partitioning.logical_to_mesh_axes(spec, rules)) for spec in SPECS]
  assert got == EXPECTED[dims]


def test_the_mesh_is_laid_out_by_create_device_mesh_with_today_s_axis_sizes():
  code = ('import jax; from hyperprompt_jax import partitioning as p\n'
          'for k in (1, 2, 4, 8):\n'
          '  m = p.create_mesh(k)\n'
          '  print(k, dict(m.shape), [d.id for d in m.devices.flat])\n')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True, timeout=120).stdout.splitlines()
  assert [line.split(' {')[0] for line in out] == ['1', '2', '4', '8']
  for line, k in zip(out, (1, 2, 4, 8)):
    assert f"{{'data': {8 // k}, 'model': {k}}}" in line
    assert line.endswith(str(list(range(8))))  # CPU devices: in id order, as before
  with pytest.raises(ValueError, match='NUM_PARTITIONS=3 must divide the'):
    partitioning.create_mesh(3, devices=list(range(8)))


PARTITIONED_DECODING = '''
import jax, numpy as np
from hyperprompt_jax import evaluation, models, partitioning
from hyperprompt_jax.network import Transformer
from tests.helpers import init_params, random_tokens, tiny_config
config = tiny_config('global')
model, params = Transformer(config), init_params(config)
inputs = [list(random_tokens(i, (5,))) + [1] for i in range(10)]
ids = [i % 3 for i in range(10)]
alone = evaluation.predict_tokens(model, params, inputs, ids, 4, 6, 8)
part = partitioning.Partitioner(1)
shardings = part.param_shardings(models.init_variables_abstract(model))
sharded = jax.tree.map(jax.device_put, params, shardings)
split = evaluation.predict_tokens(model, sharded, inputs, ids, 4, 6, 8, partitioner=part)
assert split == alone, (split, alone)
tokens, task_ids = evaluation.pad_tokens(inputs[:8], 8), np.asarray(ids[:8], np.int32)
place = lambda x: jax.make_array_from_callback(x.shape, part.batch_sharding(x.ndim),
                                               lambda i: x[i])
with part.context():
  compiled = models._compiled_greedy(config, 6, 1).lower(
      sharded, place(tokens), place(task_ids)).compile()
print(compiled.input_shardings[0][1].shard_shape((8, 8)),
      compiled.output_shardings[0].shard_shape((8, 6)))
'''


def test_decoding_splits_the_batch_over_data_and_predicts_as_one_device():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', PARTITIONED_DECODING], env=env, cwd=os.path.dirname(
      os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Each of the 8 devices holds 1 of the 8 rows, of the inputs and of the predictions; the
  # 4-row eval batch was padded to the data-parallel size.
  assert proc.stdout.split() == ['(1,', '8)', '(1,', '6)']
