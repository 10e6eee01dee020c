"""Partitioning in one place: logical axis rules, the ('data', 'model') mesh and the
`Partitioner` that turns them into shardings of parameters, optimizer state and batches.

The T5 axes follow t5x's standard rules (with its `parameter_partitioning_dims` /
`activation_partitioning_dims` semantics); the axes HyperPrompt adds (tasks, prompt positions,
hypernetwork and adapter sizes) are small and replicated. `ADAFACTOR_FACTOR_RULES` extends
t5x's `adafactor.standard_logical_factor_rules()` for t5x's own Adafactor (strings that t5x
accepts: 'row', 'column', 'batch', 'none').
"""

import contextlib
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from flax import traverse_util
from flax.core import unfreeze
from flax.linen import partitioning as nn_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = List[Tuple[str, Optional[str]]]

T5_AXIS_RULES: Rules = [  # t5x's 1-D rules (parameter and activation partitioning dims 1)
    ('batch', 'data'),
    ('vocab', 'model'),
    ('embed', None),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('joined_kv', 'model'),
]
REPLICATED_T5_AXES = ('relpos_buckets', 'abspos_buckets', 'length', 'layers', 'stack',
                      'mlp_activations')

HYPERPROMPT_AXIS_RULES: Rules = [
    ('tasks', None),             # task table
    ('prompt', None),            # prompt positions l (and S*l when packed)
    ('task_embed', None),        # t': task and layer embeddings
    ('hyper_hidden', None),      # hidden layer of h_t
    ('hyper_embed', None),       # t: layer-aware task embedding
    ('hyper_bottleneck', None),  # b: local hypernetwork bottleneck
    ('adapter', None),           # adapter bottleneck
    ('adapter_blocks', None),    # HyperFormer++'s block types (self-attention, feed-forward)
]

ADAFACTOR_FACTOR_RULES = {
    'tasks': 'batch',
    'prompt': 'column',
    'task_embed': 'none',
    'hyper_hidden': 'none',
    'hyper_embed': 'none',
    'hyper_bottleneck': 'none',
    'adapter': 'column',
    'adapter_blocks': 'batch',
}


def logical_axis_rules(parameter_partitioning_dims: int = 1,
                       activation_partitioning_dims: int = 1) -> Rules:
  """Every logical axis the network uses, mapped to mesh axes 'data' and 'model', in the
  order of t5x's `standard_logical_axis_rules` (order is priority: flax gives a mesh axis to
  the first rule that asks for it).

  1-D (the default): 'embed' is replicated. With 2-D, 'embed' comes after every other
  sharded axis: `activation_partitioning_dims=2` maps it to 'model' (so an [embed, mlp]
  kernel keeps 'model' for 'mlp' and activations' 'embed' gets it), and
  `parameter_partitioning_dims=2` to 'data' (after 'batch', so only parameters and their
  optimizer state pick it up: each is split over the whole mesh).
  """
  for name, dims in (('parameter_partitioning_dims', parameter_partitioning_dims),
                     ('activation_partitioning_dims', activation_partitioning_dims)):
    if dims not in (1, 2):
      raise ValueError(f'{name}={dims}: choose 1 (t5x default) or 2.')
  if (parameter_partitioning_dims, activation_partitioning_dims) == (1, 1):
    rules = list(T5_AXIS_RULES)
  else:
    rules = [rule for rule in T5_AXIS_RULES if rule[0] != 'embed']
    if activation_partitioning_dims == 2:
      rules.append(('embed', 'model'))
    if parameter_partitioning_dims == 2:
      rules.append(('embed', 'data'))
  return rules + [(axis, None) for axis in REPLICATED_T5_AXES] + HYPERPROMPT_AXIS_RULES


def create_mesh(num_partitions: int = 1, devices: Optional[Sequence] = None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh with `num_partitions` devices along 'model', laid out by jax's
  `mesh_utils.create_device_mesh` (as t5x does), so that on a TPU slice a model-parallel
  group sits on neighbouring chips of the interconnect; elsewhere it is the devices in order."""
  devices = list(devices if devices is not None else jax.devices())
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f'NUM_PARTITIONS={num_partitions} must divide the {len(devices)} devices; '
                     f'choose one of {[k for k in range(1, len(devices) + 1) if len(devices) % k == 0]}.')
  shape = (len(devices) // num_partitions, num_partitions)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):  # a shape the topology has no tile for
    grid = np.asarray(devices).reshape(shape)
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


@dataclasses.dataclass
class Partitioner:
  """Mesh, logical rules and the shardings derived from them. `devices`: default all of
  jax's devices (a deviceless TPU topology's devices for ahead-of-time compiles)."""
  num_partitions: int = 1
  parameter_partitioning_dims: int = 1
  activation_partitioning_dims: int = 1
  devices: Optional[Sequence] = None

  def __post_init__(self):
    self.mesh = create_mesh(self.num_partitions, self.devices)
    self.rules = logical_axis_rules(self.parameter_partitioning_dims,
                                    self.activation_partitioning_dims)

  def context(self):
    """Mesh and logical rules for tracing (activation constraints use both)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn_partitioning.axis_rules(self.rules))
    return stack

  @property
  def replicated(self):
    return NamedSharding(self.mesh, P())

  def batch_sharding(self, ndim: int):
    return NamedSharding(self.mesh, P('data', *([None] * (ndim - 1))))

  def param_shardings(self, abstract_variables):
    """Shardings of the 'params' collection, from abstract variables (with 'params_axes')."""
    return logical_to_sharding(params_logical_specs(abstract_variables), self.mesh, self.rules)

  def opt_state_shardings(self, abstract_opt_state, params, param_shardings):
    """Optimizer leaves shaped like their parameter share its sharding (Adafactor's factored
    rows/columns and other reduced leaves replicate)."""
    by_path = {tuple(k): (v.shape, s) for (k, v), s in zip(
        traverse_util.flatten_dict(params).items(),
        traverse_util.flatten_dict(param_shardings).values())}

    def pick(path, leaf):
      keys = tuple(getattr(k, 'key', None) for k in path)
      keys = tuple(k for k in keys if isinstance(k, str))
      for n in range(len(keys)):
        hit = by_path.get(keys[n:])
        if hit and tuple(hit[0]) == tuple(getattr(leaf, 'shape', ())):
          return hit[1]
      return self.replicated
    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)

  def rows_of_processes(self, batch_size: int) -> Dict[int, Tuple[int, int]]:
    """{process: rows [start, stop) of the global batch its devices hold}."""
    index_map = self.batch_sharding(1).devices_indices_map((batch_size,))
    blocks = {}
    for device, (rows,) in index_map.items():
      start, stop, _ = rows.indices(batch_size)
      lo, hi = blocks.get(device.process_index, (start, stop))
      blocks[device.process_index] = (min(lo, start), max(hi, stop))
    return blocks

  def process_rows(self, batch_size: int) -> Tuple[Tuple[int, int], int]:
    """Rows [start, stop) of the global batch that this process's devices hold, and how
    many distinct row blocks the processes hold (processes that share a data-parallel slice,
    because the 'model' axis spans them, hold the same rows)."""
    blocks = self.rows_of_processes(batch_size)
    return blocks[jax.process_index()], len(set(blocks.values()))

  def shard_batch(self, batch: Dict[str, np.ndarray], batch_size: int):
    """This process's rows of the global batch (numpy) -> global arrays sharded over 'data'."""
    return {k: jax.make_array_from_process_local_data(
        self.batch_sharding(v.ndim), v, (batch_size,) + v.shape[1:]) for k, v in batch.items()}
