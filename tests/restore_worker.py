"""One process of the sharded-restore test (tests/test_multiprocess.py): restores a checkpoint
into a model whose 'model' axis spans both processes and prints, as JSON, what this process
materialised. Usage: restore_worker.py CHECKPOINT ADDRESS PROCESS_INDEX."""

import json
import sys

import jax

from hyperprompt_jax import checkpoints, gin_utils, models, partitioning
from hyperprompt_jax.network import Transformer


def main():
  path, address, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
  gin_utils.initialize_distributed(address, 2, index)
  config = gin_utils.model_config(['models/demo.gin'], ['network.HyperPromptConfig.num_heads = 8',
                                                         'network.HyperPromptConfig.head_dim = 8'])
  part = partitioning.Partitioner(num_partitions=8)
  model = Transformer(config)
  shardings = part.param_shardings(models.init_variables_abstract(model))
  with part.context():
    params = models.init_params(model, 0, shardings)
  params, report = checkpoints.load_initial_params(path, params, shardings)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  out = {'loaded': len(report['loaded']), 'arrays': {}}
  for key, leaf in leaves:
    name = '/'.join(k.key for k in key)
    local = sum(s.data.nbytes for s in leaf.addressable_shards)
    out['arrays'][name] = {'local_bytes': int(local), 'full_bytes': int(leaf.nbytes),
                           'replicated': bool(leaf.sharding.is_fully_replicated),
                           'sum': float(jax.jit(lambda x: x.sum(), out_shardings=part.replicated)(leaf))}
  print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
  main()
