"""One process of the sharded-restore test (tests/test_multiprocess.py): restores a checkpoint
into a model whose 'model' axis spans both processes, unscanned and scanned (its layers stacked
on the way in), and as eval, infer and analysis restore a run (runtime.build), and prints, as JSON, what this process materialised. Usage: restore_worker.py
CHECKPOINT ADDRESS PROCESS_INDEX."""

import dataclasses
import json
import sys

import jax

from hyperprompt_jax import checkpoints, gin_utils, models, partitioning, runtime
from hyperprompt_jax.network import Transformer


def main():
  path, address, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
  gin_utils.initialize_distributed(address, 2, index)
  config = gin_utils.model_config(['models/demo.gin'], ['network.HyperPromptConfig.num_heads = 8',
                                                         'network.HyperPromptConfig.head_dim = 8'])
  part = partitioning.Partitioner(num_partitions=8)
  results = {}
  for layout in ('unscanned', 'scanned', 'runtime'):
    if layout == 'runtime':  # eval, infer and analysis: runtime.build + restore_params
      run = runtime.build(config, num_partitions=8)
      params, _ = run.restore_params(path)
      report = {'loaded': jax.tree.leaves(params)}
    else:
      model = Transformer(dataclasses.replace(config, scan_layers=layout == 'scanned'))
      shardings = part.param_shardings(models.init_variables_abstract(model))
      with part.context():
        params = models.init_params(model, 0, shardings)
      params, report = checkpoints.load_initial_params(path, params, shardings)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    out = results[layout] = {'loaded': len(report['loaded']), 'arrays': {}}
    for key, leaf in leaves:
      name = '/'.join(k.key for k in key)
      local = sum(s.data.nbytes for s in leaf.addressable_shards)
      stacked = name.startswith(('encoder/layers/', 'decoder/layers/'))
      sums = jax.jit(lambda x: x.reshape(x.shape[0], -1).sum(-1) if stacked else x.sum(),
                     out_shardings=part.replicated)(leaf)  # per layer when stacked
      out['arrays'][name] = {'local_bytes': int(local), 'full_bytes': int(leaf.nbytes),
                             'replicated': bool(leaf.sharding.is_fully_replicated),
                             'sum': float(sums.sum()),
                             'layer_sums': [float(v) for v in jax.device_get(sums).reshape(-1)]}
  print('RESULT ' + json.dumps(results))


if __name__ == '__main__':
  main()
