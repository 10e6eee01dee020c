"""Logical axis rules (parameters and activations -> ('data', 'model') mesh) in one place.

The T5 axes follow t5x's standard rules; the axes HyperPrompt adds (tasks, prompt positions,
hypernetwork and adapter sizes) are small and replicated. `ADAFACTOR_FACTOR_RULES` extends
t5x's `adafactor.standard_logical_factor_rules()` for t5x's own Adafactor (strings that t5x
accepts: 'row', 'column', 'batch', 'none').
"""

from typing import List, Optional, Sequence, Tuple

import jax
import numpy as np
from flax.core import unfreeze
from flax.linen import partitioning as nn_partitioning

Rules = List[Tuple[str, Optional[str]]]

T5_AXIS_RULES: Rules = [
    ('batch', 'data'),
    ('vocab', 'model'),
    ('embed', None),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('joined_kv', 'model'),
    ('relpos_buckets', None),
    ('abspos_buckets', None),
    ('length', None),
    ('layers', None),
    ('stack', None),
    ('mlp_activations', None),
]

HYPERPROMPT_AXIS_RULES: Rules = [
    ('tasks', None),             # task table
    ('prompt', None),            # prompt positions l (and S*l when packed)
    ('task_embed', None),        # t': task and layer embeddings
    ('hyper_hidden', None),      # hidden layer of h_t
    ('hyper_embed', None),       # t: layer-aware task embedding
    ('hyper_bottleneck', None),  # b: local hypernetwork bottleneck
    ('adapter', None),           # adapter bottleneck
]

ADAFACTOR_FACTOR_RULES = {
    'tasks': 'batch',
    'prompt': 'column',
    'task_embed': 'none',
    'hyper_hidden': 'none',
    'hyper_embed': 'none',
    'hyper_bottleneck': 'none',
    'adapter': 'column',
}


def logical_axis_rules() -> Rules:
  """Every logical axis the network uses, mapped to mesh axes 'data' and 'model'."""
  return T5_AXIS_RULES + HYPERPROMPT_AXIS_RULES


def create_mesh(num_partitions: int = 1, devices: Optional[Sequence] = None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh with `num_partitions` devices along 'model'."""
  devices = list(devices if devices is not None else jax.devices())
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f'NUM_PARTITIONS={num_partitions} must divide the {len(devices)} devices; '
                     f'choose one of {[k for k in range(1, len(devices) + 1) if len(devices) % k == 0]}.')
  grid = np.asarray(devices).reshape(len(devices) // num_partitions, num_partitions)
  return jax.sharding.Mesh(grid, ('data', 'model'))


def logical_to_sharding(logical_specs, mesh, rules: Optional[Rules] = None):
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  rules = logical_axis_rules() if rules is None else rules
  mesh_specs = nn_partitioning.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), mesh_specs,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def params_logical_specs(variables):
  """Logical PartitionSpecs of the 'params' collection, from the 'params_axes' collection."""
  return unfreeze(nn_partitioning.get_axis_names(variables['params_axes']))
